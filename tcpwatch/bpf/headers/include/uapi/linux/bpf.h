/* Empty: bcc's helpers include it by name; bcc's own copy of the BPF definitions is used. */

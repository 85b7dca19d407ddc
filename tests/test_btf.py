"""The BTF reader against the running kernel's BTF, checked by an independent route: bpftool
writes the same BTF out as C, gcc lays the structs out, offsetof() must agree."""

import shutil
import subprocess

import pytest

from tcpwatch.sources import bpf, btf

needs_btf = pytest.mark.skipif(not __import__("os").path.exists(btf.VMLINUX), reason="no kernel BTF")


@pytest.fixture(scope="module")
def kernel_btf():
    return btf.Btf.load()


@needs_btf
@pytest.mark.skipif(not (shutil.which("bpftool") and shutil.which("gcc")), reason="needs bpftool and gcc")
def test_every_offset_the_program_uses_matches_gcc_on_bpftools_c_dump(kernel_btf, tmp_path):
    header = subprocess.run(["bpftool", "btf", "dump", "file", btf.VMLINUX, "format", "c"],
                            capture_output=True, text=True, check=True).stdout
    (tmp_path / "vmlinux.h").write_text(header)
    fields = {**bpf.FIELDS, **bpf.OWNER_FIELDS, **bpf.COOKIE_FIELDS}
    lines = [f'printf("{name} %zu %zu\\n", __builtin_offsetof(struct {s}, {path}), '
             f'sizeof(((struct {s} *)0)->{path}));' for name, (s, path, _size) in fields.items()]
    (tmp_path / "offsets.c").write_text('#include "vmlinux.h"\nint printf(const char *, ...);\n'
                                        "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    subprocess.run(["gcc", "-w", "-o", str(tmp_path / "offsets"), str(tmp_path / "offsets.c")], check=True)
    out = subprocess.run([str(tmp_path / "offsets")], capture_output=True, text=True, check=True).stdout
    from_gcc = {name: (int(offset), int(size)) for name, offset, size in (line.split() for line in out.splitlines())}
    ours = {name: kernel_btf.offset(s, path) for name, (s, path, _size) in fields.items()}
    assert ours == from_gcc


@needs_btf
def test_tracepoint_typedefs_and_the_layout_the_program_needs(kernel_btf):
    offsets, ids = bpf.kernel_layout()
    assert set(offsets) == set(bpf.FIELDS)
    assert set(ids) == {tp for _fn, tp in bpf.TP_BTF_HOOKS + bpf.TP_BTF_TIMER_HOOKS}
    assert len(set(ids.values())) == len(ids) and all(i > 0 for i in ids.values())
    owner_offsets, iterator_id = bpf.owner_layout()
    assert set(owner_offsets) == set(bpf.OWNER_FIELDS) and iterator_id > 0


@needs_btf
@pytest.mark.parametrize("struct,path,says", [
    ("no_such_struct_here", "x", "no struct no_such_struct_here"),
    ("sock", "no_such_member", "has no member no_such_member"),
    ("sock", "sk_no_check_tx", "bit field"),
    ("sock", "sk_protocol.x", "not a struct"),
])
def test_what_it_cannot_answer_is_one_clear_error(kernel_btf, struct, path, says):
    with pytest.raises(btf.BtfError, match=says):
        kernel_btf.offset(struct, path)


def test_a_file_that_is_not_btf_is_refused(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x00" * 64)
    with pytest.raises(btf.BtfError, match="bad magic"):
        btf.Btf.load(str(tmp_path / "junk"))
    with pytest.raises(btf.BtfError, match="cannot read"):
        btf.Btf.load(str(tmp_path / "missing"))
    with pytest.raises(btf.BtfError, match="truncated"):
        btf.Btf(b"\x9f\xeb")

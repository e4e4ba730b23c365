"""The toolkit-tree builder's pure parts: the generated C (compiled and run here with the system
compiler), the split of the headers into libraries, the input hash and the reuse decision."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cffi
import pytest

from cabi import build, build_c, build_libs, symbols

KINDS = {  # ABI return type -> what an unsupported call answers
    "int": ("code", "200006"),
    "void *": ("null", "NULL"),
    "uint32_t": ("zero", "0"),
    "size_t": ("zero", "0"),
    "uint64_t": ("zero", "0"),
    "int64_t": ("zero", "0"),
    "uint16_t": ("zero", "0"),
    "uint8_t": ("zero", "0"),
    "float": ("zero", "0"),
    "double": ("zero", "0"),
    "_Bool": ("zero", "0"),
    "void": ("void", ""),
}


def compile_and_run(tmp_path: Path, source: str, env: dict[str, str] | None = None):
    c_file = tmp_path / "probe.c"
    c_file.write_text(source)
    exe = tmp_path / "probe"
    subprocess.run(
        ["cc", "-std=gnu99", "-Wall", "-Werror", "-o", str(exe), str(c_file)],
        check=True,
        capture_output=True,
        text=True,
    )
    return subprocess.run(
        [str(exe)], capture_output=True, text=True, timeout=10, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize("abi_ret", sorted(KINDS))
def test_return_kind_and_value_for_every_abi_return_type(abi_ret):
    kind, value = KINDS[abi_ret]
    assert build_c.return_kind(abi_ret) == kind
    assert build_c.unsupported_value(kind) == value


def test_every_abi_return_type_of_the_headers_has_a_kind():
    returns = {symbols.abi_type(p.ret) for p in symbols.prototypes()}
    assert returns <= set(KINDS), returns - set(KINDS)


def _print_call(name: str, kind: str) -> str:
    """C that calls ``name`` (with arguments it ignores) and prints ``name=<result>``."""
    if kind == "void":
        return f'{name}(1, 2); printf("{name}=void\\n");'
    if kind == "null":
        return f'printf("{name}=%s\\n", {name}(1, 2) == NULL ? "NULL" : "set");'
    return f'printf("{name}=%g\\n", (double){name}(1, 2));'


def test_unsupported_bodies_return_their_value_and_tell_once(tmp_path):
    functions = [(f"f_{i}", ret) for i, ret in enumerate(sorted(KINDS))]
    calls = [_print_call(n, build_c.return_kind(r)) for n, r in functions for _ in range(2)]
    source = (
        build_c.notes_source()
        + build_c.unsupported_source(functions)
        + "int main(void) {\n"
        + "\n".join(calls)
        + "\nreturn 0; }\n"
    )
    done = compile_and_run(tmp_path, source)
    assert done.returncode == 0
    shown = {"code": "200006", "null": "NULL", "zero": "0", "void": "void"}
    for name, ret in functions:
        assert done.stdout.count(f"{name}={shown[build_c.return_kind(ret)]}\n") == 2
    told = done.stderr.splitlines()  # once per name, however often called
    said = {
        "code": "returning 200006 (ACL_ERROR_FEATURE_UNSUPPORTED)",
        "null": "returning NULL",
        "zero": "returning 0",
        "void": "doing nothing",
    }
    assert told == [
        f"npufarm: {name} is not emulated; {said[build_c.return_kind(ret)]}"
        for name, ret in functions
    ]


def test_stub_bodies_say_they_are_stubs(tmp_path):
    source = build_c.stub_source([("aclrtFoo", "int")]) + (
        'int main(void) { printf("%d\\n", aclrtFoo()); return 0; }\n'
    )
    done = compile_and_run(tmp_path, source)
    assert done.stdout == "200006\n"
    assert "aclrtFoo called in a link-time stub library" in done.stderr
    assert "set_env.sh" in done.stderr


@pytest.mark.parametrize(
    ("threshold", "shown"), [(None, ["INFO", "WARNING", "ERROR"]), ("3", ["ERROR"])]
)
def test_app_log_prints_from_the_configured_level(monkeypatch, tmp_path, threshold, shown):
    if threshold is None:
        monkeypatch.delenv("ASCEND_GLOBAL_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("ASCEND_GLOBAL_LOG_LEVEL", threshold)
    logs = "".join(
        f'aclAppLog({level}, "fn", "file.c", {level + 10}, "value %d %s", {level}, "x");\n'
        for level in range(4)
    )
    source = (
        build_c.notes_source()
        + build_c.applog_source()
        + f"int main(void) {{\n{logs}return 0; }}\n"
    )
    done = compile_and_run(tmp_path, source)
    assert [line.split("]")[0].lstrip("[") for line in done.stderr.splitlines()] == shown
    assert "[ERROR] fn file.c:13: value 3 x" in done.stderr.splitlines()


def test_dvpp_forwarders_and_preamble_compile():
    source = build_c.notes_source() + build_c.dvpp_forwarders()
    subprocess.run(
        ["cc", "-fsyntax-only", "-Wall", "-Werror", "-x", "c", "-"],
        input=source,
        text=True,
        check=True,
    )
    preamble = build_c.ascendcl_preamble('/venv "quoted"/bin/python', "/venv/site-packages")
    assert r'"/venv \"quoted\"/bin/python"' in preamble
    assert '"/venv/site-packages"' in preamble
    assert "Py_SetProgramName" in preamble and "atexit(" in preamble
    assert "_Py_IsFinalizing()" in preamble and "Py_GetVersion()" in preamble


def test_init_code_installs_under_the_python_names_and_tells_the_c_half():
    code = build_c.init_code("_mod", bridge="no_such_bridge")
    compile(code, "<init>", "exec")  # valid Python
    assert "from _mod import ffi, lib" in code and "import no_such_bridge" in code
    assert "prefix='_npufarm_py_', handles_as_ints=True" in code
    assert "lib.npufarm_mark_ready()" in code and "lib.npufarm_mark_failed()" in code
    assert f"return {build_c.UNUSABLE_CODE}" in code and build_c.UNUSABLE_CODE == 100001


@pytest.mark.parametrize(
    ("name", "abi_ret", "kind", "failure", "value"),
    [
        ("aclrtMalloc", "int", "error", None, "100001"),
        ("aclInit", "int", "error", None, "100001"),
        ("aclrtDestroyContext", "int", "error", None, "0"),
        ("aclrtFreeHost", "int", "error", None, "0"),
        ("aclrtResetDevice", "int", "error", None, "0"),
        ("aclmdlUnload", "int", "error", None, "0"),
        ("aclmdlDestroyDataset", "int", "error", None, "0"),
        ("aclDestroyDataBuffer", "int", "error", None, "0"),
        ("aclFinalize", "int", "error", None, "0"),
        ("aclrtUnSubscribeReport", "int", "error", None, "0"),
        ("aclmdlCreateDesc", "void *", "pointer", None, "NULL"),
        ("aclGetTensorDescType", "int", "value", -1, "-1"),
        ("aclrtGetTaskIdFromExceptionInfo", "uint32_t", "value", 0xFFFFFFFF, "4294967295"),
        ("aclmdlGetNumInputs", "size_t", "value", 0, "0"),
        ("aclFloat16ToFloat", "float", "real", 0.0, "0.0"),
        ("aclDestroyTensorDesc", "void", "void", None, ""),
    ],
)
def test_unusable_values_release_succeeds_others_fail(name, abi_ret, kind, failure, value):
    assert build_c.unusable_value(name, abi_ret, kind, failure) == value


def test_python_bodies_take_pointers_as_uintptr():
    declared = build_c.python_declaration("aclrtMalloc", "int", ["void *", "size_t", "int"])
    assert declared == "int _npufarm_py_aclrtMalloc(uintptr_t, size_t, int);"
    assert build_c.python_declaration("aclrtGetSocName", "void *", []) == (
        "uintptr_t _npufarm_py_aclrtGetSocName(void);"
    )
    cffi.FFI().cdef(f'extern "Python" {declared}')


def _wrapper_probe(state: str) -> str:
    """C that defines the preamble's state and fake Python bodies, then calls the wrappers."""
    wrappers = "\n".join(
        (
            build_c.wrapper_source("aclrtMalloc", "int", ["void *", "size_t", "int"], "100001"),
            build_c.wrapper_source("aclrtFree", "int", ["void *"], "0"),
            build_c.wrapper_source("aclrtGetSocName", "void *", [], "NULL"),
            build_c.wrapper_source("aclDestroyTensorDesc", "void", ["void *"], ""),
        )
    )
    return (
        build_c.notes_source()
        + f"static int usable = {state}, ready = 1, calls;\n"
        + "static int npufarm_enter(void) { return usable; }\n"
        + "static int npufarm_started(void) { return ready; }\n"
        + "static int _npufarm_py_aclrtMalloc(uintptr_t p, size_t n, int k)"
        + " { calls++; *(void **)p = (void *)0x1000; return (int)n + k; }\n"
        + "static int _npufarm_py_aclrtFree(uintptr_t p) { calls++; return p == 0x1000 ? 7 : 8; }\n"
        + "static uintptr_t _npufarm_py_aclrtGetSocName(void) { calls++; return 0x2000; }\n"
        + "static void _npufarm_py_aclDestroyTensorDesc(uintptr_t p) { calls += (int)p; }\n"
        + wrappers
        + "\nint main(void) { void *p = NULL; int m = aclrtMalloc(&p, 5, 2);\n"
        + "int f = aclrtFree(p); void *s = aclrtGetSocName(); aclDestroyTensorDesc((void *)10);\n"
        + 'printf("%d %p %d %p %d\\n", m, p, f, s, calls); return 0; }\n'
    )


@pytest.mark.parametrize(
    ("state", "printed"), [("1", "7 0x1000 7 0x2000 13"), ("0", "100001 (nil) 0 (nil) 0")]
)
def test_wrappers_cast_pointers_and_answer_without_python(tmp_path, state, printed):
    done = compile_and_run(tmp_path, _wrapper_probe(state))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed


def _proto(name: str, ret: str, library: str = "ascendcl") -> symbols.Prototype:
    return symbols.Prototype(name, ret, (), "acl/acl_rt.h", library)


def test_library_sets_split_by_library_and_keep_c_and_forwarded_calls_out():
    protos = [
        _proto("aclInit", "aclError"),
        _proto("aclAppLog", "void"),
        _proto("aclrtGetSocName", "const char *"),
        _proto("acldvppMalloc", "aclError", "acl_dvpp"),
        _proto("aclblasGemmEx", "aclError", "acl_cblas"),
    ]
    emulated = ["aclInit", "aclAppLog", "acldvppMalloc"]
    sets = build_libs.library_sets(protos, emulated)
    assert sets["ascendcl"].names == ["aclAppLog", "aclInit", "aclrtGetSocName"]
    assert sets["ascendcl"].emulated == ("aclInit",)  # aclAppLog is C (variadic)
    assert sets["ascendcl"].elsewhere == ("acldvppMalloc",)
    assert sets["acl_dvpp"].functions == (("acldvppMalloc", "int"),)
    assert sets["acl_cblas"].names == ["aclblasGemmEx"]
    with pytest.raises(ValueError, match="do not declare"):
        build_libs.library_sets(protos, ["aclNoSuchCall"])


def test_the_real_headers_split_into_three_libraries():
    sets = build_libs.library_sets(symbols.prototypes(), [])
    assert set(sets) == {"ascendcl", "acl_dvpp", "acl_cblas"}
    assert len(sets["acl_dvpp"].functions) == 177 and len(sets["acl_cblas"].functions) == 12


def test_input_hash_follows_headers_and_sources_only(tmp_path):
    cabi = tmp_path / "cabi"
    shutil.copytree(build.CABI_DIR, cabi, ignore=shutil.ignore_patterns("__pycache__"))
    first = build.input_hash(cabi)
    assert build.input_hash(cabi) == first and len(first) == 16
    (cabi / "__pycache__").mkdir(exist_ok=True)
    (cabi / "__pycache__" / "x.pyc").write_bytes(b"noise")
    (cabi / "notes.txt").write_text("not an input")
    assert build.input_hash(cabi) == first
    header = next(cabi.rglob("acl_rt.h"))
    header.write_text(header.read_text() + "\n")
    assert build.input_hash(cabi) != first
    assert build.input_hash(cabi, python="/other/venv/bin/python") != build.input_hash(cabi)


def test_locate_uses_the_prefix_or_the_per_user_cache(monkeypatch, tmp_path):
    assert build.locate(tmp_path / "here", "abc") == tmp_path / "here"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert build.locate(None, "abc") == tmp_path / "cache" / "npufarm" / "sdk" / "abc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build.locate(None, "abc") == tmp_path / "home" / ".cache" / "npufarm" / "sdk" / "abc"


def test_is_current_needs_the_stamp_the_hash_and_the_library(tmp_path):
    assert not build.is_current(tmp_path, "abc")
    (tmp_path / build.STAMP).write_text(json.dumps({"hash": "abc"}))
    assert not build.is_current(tmp_path, "abc")  # no library yet
    lib = tmp_path / "runtime" / "lib64" / "libascendcl.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    assert build.is_current(tmp_path, "abc")
    assert not build.is_current(tmp_path, "abd")
    (tmp_path / build.STAMP).write_text("{torn")
    assert not build.is_current(tmp_path, "abc")


def test_build_refuses_a_directory_that_is_not_a_tree(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an npufarm toolkit tree"):
        build.build_tree(tmp_path, "abc")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_set_env_quotes_a_root_with_spaces(tmp_path):
    root = tmp_path / "my tree's root"
    script = tmp_path / "set_env.sh"
    script.write_text(build.set_env_text(root))
    done = subprocess.run(
        ["sh", "-c", f". '{script}' && printf '%s\\n' \"$ASCEND_HOME_PATH\" \"$LD_LIBRARY_PATH\""],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        check=True,
    )
    assert done.stdout.splitlines() == [str(root), f"{root}/runtime/lib64"]


def test_by_value_struct_prelude_is_valid_for_cffi_and_for_c():
    """Should an emulated call take a struct by value (dim3, say), libascendcl declares it
    from this text in cffi's cdef and in the C source alike."""
    prelude = symbols.abi_prelude()
    assert "dim3" in prelude
    cffi.FFI().cdef(prelude)
    subprocess.run(
        ["cc", "-fsyntax-only", "-Wall", "-Werror", "-x", "c", "-"],
        input=build_c.notes_source() + prelude,
        text=True,
        check=True,
    )

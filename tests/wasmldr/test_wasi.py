"""WASI as wasmtime gives it, in the Keep's Wasm runtime: argv, environment, stdin, a private
scratch folder at ``/`` (fd 3) with /data read-only beside it, wasmtime's own fd table for
stdout, wasmtime's poll_oneoff for descriptors, and wasmtime's reason for a failed exit.  Each
behaviour has its own small C or WAT program, compiled by the project's own toolchain (zig)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import wasmtime as wt

from keepbook.keep.inside.runtime import WasiInput, WasmRuntime
from keepbook.kernel import compilers

pytestmark = pytest.mark.slow

MiB = 1 << 20


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, kind: str, content: dict) -> None:
        self.events.append((kind, content))

    def text(self, name: str) -> str:
        return "".join(c["text"] for k, c in self.events if k == "stream" and c["name"] == name)

    def errors(self) -> list[dict]:
        return [c for k, c in self.events if k == "error"]


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keep")


@pytest.fixture(scope="module")
def rt(scratch_root) -> WasmRuntime:
    runtime = WasmRuntime(memory_bytes=64 * MiB, scratch_root=str(scratch_root), fast_tier=False)
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def c_program():
    compilers.warm()
    cache: dict[str, bytes] = {}

    def build(source: str) -> bytes:
        if source not in cache:
            cache[source] = compilers.compile_cell("c", source).module
        return cache[source]
    return build


def run(rt: WasmRuntime, module: bytes, **wasi) -> tuple[dict, Recorder]:
    rec = Recorder()
    status = rt.run(module, emit=rec, timeout_s=30, wasi=WasiInput.of(**wasi))
    return status, rec


ECHO_ARGS_ENV = r"""
#include <stdio.h>
#include <stdlib.h>
extern char **environ;
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = environ; *e; e++) printf("env %s\n", *e);
    return 0;
}
"""


def test_argv_and_environment(rt, c_program):
    status, rec = run(rt, c_program(ECHO_ARGS_ENV), argv=["one", "two words", "-v"],
                      env=[("GREETING", "hello"), ("EMPTY", "")])
    assert status["ok"], rec.events
    out = rec.text("stdout")
    assert "argv[0]=cell.wasm\nargv[1]=one\nargv[2]=two words\nargv[3]=-v\n" in out
    assert "env GREETING=hello\n" in out and "env EMPTY=\n" in out
    assert out.count("env ") == 2  # nothing of the Keep's own environment


COUNT_STDIN = r"""
#include <stdio.h>
int main(void) {
    char line[256]; int n = 0;
    while (fgets(line, sizeof line, stdin)) { n++; printf("got: %s", line); }
    printf("lines=%d\n", n);
    return 0;
}
"""


def test_stdin(rt, c_program):
    status, rec = run(rt, c_program(COUNT_STDIN), stdin=b"alpha\nbeta\n")
    assert rec.text("stdout") == "got: alpha\ngot: beta\nlines=2\n"
    status, rec = run(rt, c_program(COUNT_STDIN))  # no --stdin: empty input
    assert rec.text("stdout") == "lines=0\n"


FILES = r"""
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <fcntl.h>
int main(void) {
    FILE *f = fopen("/notes.txt", "w+");
    if (!f) { perror("create"); return 1; }
    fputs("0123456789", f);
    fseek(f, 3, SEEK_SET);
    char buf[5] = {0};
    fread(buf, 1, 4, f);
    printf("read after seek: %s\n", buf);
    fclose(f);
    struct stat st;
    if (stat("notes.txt", &st) != 0) { perror("stat"); return 1; }  /* relative: cwd is / */
    printf("size: %lld\n", (long long) st.st_size);
    int fd = open("/notes.txt", O_RDONLY);
    printf("lseek end: %lld\n", (long long) lseek(fd, 0, SEEK_END));
    close(fd);
    if (unlink("/notes.txt") != 0) { perror("unlink"); return 1; }
    printf("after unlink: %s\n", access("/notes.txt", F_OK) == 0 ? "exists" : "gone");
    printf("data is read-only: %s\n", fopen("/data/new.txt", "w") ? "no" : "yes");
    return 0;
}
"""


def test_files_in_the_scratch_folder(rt, c_program, scratch_root):
    status, rec = run(rt, c_program(FILES))
    assert status["ok"], (rec.events, status)
    assert rec.text("stdout") == ("read after seek: 3456\nsize: 10\nlseek end: 10\n"
                                  "after unlink: gone\ndata is read-only: yes\n")
    assert list(scratch_root.iterdir()) == []  # every run's folder is removed afterwards


LEAVE_FILE = r"""
#include <stdio.h>
int main(void) {
    FILE *f = fopen("/left.txt", "r");
    printf("%s\n", f ? "found the last run's file" : "fresh folder");
    f = fopen("/left.txt", "w"); fputs("x", f); fclose(f);
    return 0;
}
"""


def test_each_run_gets_a_fresh_scratch_folder(rt, c_program):
    for _ in range(2):
        status, rec = run(rt, c_program(LEAVE_FILE))
        assert rec.text("stdout") == "fresh folder\n"


def test_scratch_counts_against_the_memory_limit(scratch_root):
    small = WasmRuntime(memory_bytes=32 * MiB, scratch_root=str(scratch_root), fast_tier=False)
    big = compilers.compile_cell("c", r"""
#include <stdio.h>
#include <string.h>
int main(void) {
    static char block[65536];
    memset(block, 'x', sizeof block);
    FILE *f = fopen("/big.bin", "w");
    for (int i = 0; i < 768; i++) fwrite(block, 1, sizeof block, f);   /* 48 MiB */
    fclose(f);
    return 0;
}""").module
    status, rec = run(small, big)
    assert status["reason"] == "scratch"
    (err,) = rec.errors()
    assert err["ename"] == "ScratchLimitExceeded" and "memory limit of 32 MiB" in err["evalue"]
    assert list(scratch_root.iterdir()) == []


def test_data_is_beside_the_scratch_folder_not_at_fd_3(tmp_path, scratch_root, c_program):
    prestats = c_program(r"""
#include <stdio.h>
#include <wasi/api.h>
int main(void) {
    for (__wasi_fd_t fd = 3; fd < 8; fd++) {
        __wasi_prestat_t p;
        if (__wasi_fd_prestat_get(fd, &p) != 0) break;
        char name[64] = {0};
        __wasi_fd_prestat_dir_name(fd, (unsigned char *) name, p.u.dir.pr_name_len);
        printf("%d %s\n", fd, name);
    }
    return 0;
}""")
    data = tmp_path / "data"
    data.mkdir()
    empty = WasmRuntime(data_dir=str(data), scratch_root=str(scratch_root), fast_tier=False)
    assert run(empty, prestats)[1].text("stdout") == "3 /\n"  # nothing uploaded: no /data
    (data / "x.csv").write_text("1,2\n")
    assert run(empty, prestats)[1].text("stdout") == "3 /\n4 /data\n"


CLOSED_STDOUT = r"""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "before\n")
  (data (i32.const 32) "after\n")
  (func (export "_start") (result i32)
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 7))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $close (i32.const 1)))
    (i32.store (i32.const 0) (i32.const 32)) (i32.store (i32.const 4) (i32.const 6))
    (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"""


def test_a_write_after_closing_stdout_fails_and_prints_nothing(rt):
    rec = Recorder()
    status = rt.run(wt.wat2wasm(CLOSED_STDOUT), invoke="_start", emit=rec, timeout_s=10)
    assert rec.text("stdout") == "before\n"
    assert status["results"] == [8]  # EBADF, as wasmtime answers it


POLL_BAD_FD = r"""(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $p (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; one subscription at 64: userdata 5, tag 1 (fd_read), fd 99 (never opened)
  (func (export "poll") (result i32)
    (i64.store (i32.const 64) (i64.const 5))
    (i32.store8 (i32.const 72) (i32.const 1))
    (i32.store (i32.const 80) (i32.const 99))
    ;; poll's own answer << 16 | the event's error field (u16 at offset 8 of the event)
    (i32.or (i32.shl (call $p (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 256))
                     (i32.const 16))
            (i32.load16_u (i32.const 136)))))"""


def test_poll_on_a_bad_descriptor_reports_ebadf(rt):
    rec = Recorder()
    status = rt.run(wt.wat2wasm(POLL_BAD_FD), invoke="poll", emit=rec, timeout_s=10)
    assert status["ok"], rec.events
    # wasmtime answers the whole call with EBADF (8): the descriptor is not "ready"
    assert status["results"] in ([8 << 16], [8])


EXIT_200 = r"""(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 200))))"""


def test_exit_200_keeps_wasmtimes_reason(rt):
    status, rec = run(rt, wt.wat2wasm(EXIT_200))
    (err,) = rec.errors()
    assert "exit with invalid exit status outside of [0..126)" in err["evalue"]


def test_sleep_is_interruptible(rt, c_program):
    sleeper = c_program('#include <unistd.h>\n#include <stdio.h>\n'
                        'int main(void){puts("zz"); fflush(stdout); sleep(20); return 0;}')
    rec = Recorder()
    result: dict = {}
    th = threading.Thread(target=lambda: result.update(
        rt.run(sleeper, emit=rec, timeout_s=60)))
    th.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert rt.interrupt()
    th.join(5)
    assert time.monotonic() - t0 < 2 and result["reason"] == "interrupted"


def test_the_fast_tier_passes_argv_env_and_stdin_too(scratch_root, c_program):
    fast = WasmRuntime(scratch_root=str(scratch_root))
    try:
        from keepbook.keep.inside.fastcells import FastWorker

        worker = FastWorker(None, str(scratch_root))
        worker.start_soon()
        deadline = time.monotonic() + 30
        while not worker.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.ready()
        rec = Recorder()
        status = worker.run(c_program(ECHO_ARGS_ENV), invoke=None, args=[], emit=rec,
                            timeout_s=30, output_bytes=MiB, memory_bytes=64 * MiB,
                            wasi=WasiInput.of(["x"], [("K", "v")]))
        worker.kill()
        assert status["ok"] and "argv[1]=x\n" in rec.text("stdout")
        assert "env K=v\n" in rec.text("stdout")
    finally:
        fast.close()
    assert not any(p.name.startswith("keep-run-") for p in scratch_root.iterdir())
    assert os.path.isdir(scratch_root)

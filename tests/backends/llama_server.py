"""llama.cpp's own server and the tiny models the tests run it with, built from registry packages only, into a
cache outside the clone; what is there already is not made again, so a second run takes seconds.

    python3 tests/backends/llama_server.py           # build what is missing (about 5 minutes on 2 cores, once)
    python3 tests/backends/llama_server.py --where   # print the cache folder

Steps, each timed: the sources (the llama-cpp-python sdist on PyPI vendors llama.cpp, its server included);
a virtualenv with llama.cpp's own GGUF writer (``gguf-py`` from those sources, numpy from PyPI); the server,
built with CMake (no web UI, no curl, no OpenSSL; tuned to this machine's CPU, so a new CPU rebuilds it); the
tiny random-weight models (``tiny_model.py``), one per tokenizer the tests need. The cache is
``$MOOLTIPROXY_CACHE/llama`` or ``~/.cache/mooltiproxy/llama``. Needs cmake, make and g++ (Debian); without
them it says so and builds nothing (and fails under ``CI=true``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

VERSION = "0.3.36"  # llama-cpp-python, vendoring llama.cpp at commit 0c1e57098bba
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
HERE = Path(__file__).resolve().parent
# The tokenizers the tests use, each a vocab-only file in llama.cpp's sources: model name -> vocab file.
MODELS = {
    "qwen2": "ggml-vocab-qwen2.gguf",  # byte-level BPE with ChatML's special tokens and its own chat template
    "llama-spm": "ggml-vocab-llama-spm.gguf",  # Llama 2's SentencePiece (<s>, </s>, [INST] as text)
    "llama-bpe": "ggml-vocab-llama-bpe.gguf",  # Llama 3's (<|begin_of_text|>, <|eot_id|>, <|start_header_id|>)
}
BUILD_TOOLS = ("cmake", "make", "g++")  # Debian's cmake, make and g++
CMAKE_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
               "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
               "-DGGML_NATIVE=ON", "-DGGML_CCACHE=OFF", "-DBUILD_SHARED_LIBS=OFF"]


def cache() -> Path:
    base = os.environ.get("MOOLTIPROXY_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mooltiproxy") / "llama"


def server_binary() -> Path:
    return cache() / "bin" / "llama-server"


def model(name: str = "qwen2") -> Path:
    return cache() / "models" / f"{name}.gguf"


def ready() -> bool:
    return server_binary().is_file() and all(model(name).is_file() for name in MODELS)


def sources_dir() -> Path:
    return cache() / "src" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"


def _stamp(path: Path, want: str) -> bool:
    return path.is_file() and path.read_text() == want


def _run(argv: list[str], log: Path | None = None, **kwargs: object) -> None:
    if log is None:
        subprocess.run(argv, check=True, **kwargs)  # type: ignore[call-overload]
        return
    with log.open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
    if done.returncode:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"{argv[0]} failed; the log is {log}")


class Steps:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def step(self, name: str, work: object) -> None:
        t = time.monotonic()
        did = work() if callable(work) else None
        print(f"  {name}: {'done' if did else 'already there'} ({time.monotonic() - t:.1f} s)", flush=True)


def sources() -> bool:
    if (sources_dir() / "tools" / "server" / "server.cpp").is_file():
        return False
    folder = cache() / "src"
    folder.mkdir(parents=True, exist_ok=True)
    sdist = folder / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        # The sdist of this one package only (building its build backends from source would take minutes).
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "llama-cpp-python",
              f"llama-cpp-python=={VERSION}", "-d", str(folder)])
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise SystemExit(f"{sdist.name}: sha256 {digest}, not the {SDIST_SHA256} this script expects")
    with tarfile.open(sdist) as tar:
        tar.extractall(folder, filter="data")
    return True


def writer() -> bool:
    venv = cache() / "venv"
    python = venv / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import gguf, numpy"], capture_output=True).returncode == 0:
        return False
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(sources_dir() / "gguf-py")],
         cache() / "writer.log")
    return True


def _cpu() -> str:
    """What the build is tuned to (GGML_NATIVE): this machine's CPU flags."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return hashlib.sha256(f"{VERSION} {' '.join(CMAKE_FLAGS)} {flags}".encode()).hexdigest()[:16]


def server() -> bool:
    stamp = cache() / "bin" / "llama-server.stamp"
    if server_binary().is_file() and _stamp(stamp, _cpu()):
        return False
    build = cache() / "build"
    if not _stamp(build / "configured.stamp", _cpu()):
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        _run(["cmake", "-S", str(sources_dir()), "-B", str(build), *CMAKE_FLAGS], cache() / "configure.log")
        (build / "configured.stamp").write_text(_cpu())
    jobs = str(max(1, len(os.sched_getaffinity(0))))
    _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], cache() / "build.log")
    server_binary().parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / "bin" / "llama-server", server_binary())
    stamp.write_text(_cpu())
    return True


def models() -> bool:
    maker = HERE / "tiny_model.py"
    want = hashlib.sha256(maker.read_bytes()).hexdigest()[:16]
    made = False
    for name, vocab in MODELS.items():
        out = model(name)
        stamp = out.with_suffix(".stamp")
        if out.is_file() and _stamp(stamp, want):
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        _run([str(cache() / "venv" / "bin" / "python"), str(maker), str(sources_dir() / "models" / vocab), str(partial)])
        partial.replace(out)
        stamp.write_text(want)
        made = True
    return made


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--where", action="store_true", help="print the cache folder and stop")
    if args.parse_args().where:
        print(cache())
        return
    print(f"llama-server and tiny models in {cache()}", flush=True)
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing and not ready():
        # Like the tests' other Debian needs: without them here the tests that need the server skip,
        # naming this script; under CI they fail, and so does this.
        print(f"  not built: {', '.join(missing)} missing (apt-get install -y {' '.join(BUILD_TOOLS)}); "
              "the tests that need llama-server will skip", flush=True)
        raise SystemExit(1 if os.environ.get("CI") == "true" else 0)
    steps = Steps()
    steps.step(f"sources (llama-cpp-python {VERSION} sdist from PyPI)", sources)
    steps.step("GGUF writer (gguf-py from the sources, in a venv)", writer)
    steps.step("llama-server (cmake --target llama-server)", server)
    steps.step(f"tiny models ({', '.join(MODELS)})", models)
    size = sum(model(name).stat().st_size for name in MODELS) / 1e6
    print(f"ready in {time.monotonic() - steps.started:.1f} s: {server_binary()}, models {size:.0f} MB", flush=True)


if __name__ == "__main__":
    main()

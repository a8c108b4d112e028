"""Fuzzing the readers of untrusted files: MLP.load, io.read_checkpoint (and _resume on what it
returns), io.read_npz.

Valid archives (models, checkpoints, a data file) are mutated (byte flips, truncation, .npy
header edits, shape inflation, zip bombs, lying zip sizes, member renames / duplicates /
deletions / replacements, JSON edits) and read in a child process whose address space is
limited to ~1.5 GB (RLIMIT_AS). Every read must succeed or raise ValueError /
FileNotFoundError: never another exception, never a crash, never the memory limit.

Each case i of a run draws from numpy.random.default_rng([seed, i]), so a failure is replayed
with its seed (printed). Environment: FASTMLP_FUZZ_SECONDS (default 3) for a longer run,
FASTMLP_FUZZ_SEED (an integer, or "random"; default a fixed seed, so CI is deterministic up
to how many cases fit in the time).

    FASTMLP_FUZZ_SECONDS=600 FASTMLP_FUZZ_SEED=random python -m pytest -q tests/test_fuzz.py -s
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import time
import traceback
import zipfile

import numpy as np

DEFAULT_SEED = 20261129
MEMORY_LIMIT = 1536 << 20  # RLIMIT_AS of the child
ALLOWED = (ValueError, FileNotFoundError)


# ---- the corpus: valid files -----------------------------------------------------------------

def corpus(directory: str) -> dict[str, bytes]:
    """name -> bytes of a valid file of each kind."""
    from fastmlp import MLP, SGD, Adam
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(24, 3)), rng.integers(0, 2, 24)
    files = {}
    for name, model, optimizer in [
            ("model32", MLP([3, 4, 2], dtype="float32", seed=0), None),
            ("model64", MLP([3, 5, 3, 1], dtype="float64", output="sigmoid", seed=1), None),
            ("ckpt_adam", MLP([3, 4, 2], dtype="float32", seed=0), Adam(lr=1e-2)),
            ("ckpt_sgd", MLP([3, 2], dtype="float64", seed=0), SGD(lr=0.1, momentum=0.9))]:
        path = os.path.join(directory, name + ".npz")
        if optimizer is None:
            model.save(path)
        else:
            labels = y if model.output == "softmax" else y[:, None].astype(float)
            model.fit(X, labels, epochs=2, batch_size=8, optimizer=optimizer, seed=3,
                      checkpoint=path, validation_data=(X[:4], labels[:4]))
        with open(path, "rb") as f:
            files[name] = f.read()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=X, y=y, feature_names=np.array(["a", "b", "c"]))
    files["data"] = buffer.getvalue()
    return files


# ---- mutations -------------------------------------------------------------------------------

def members_of(data: bytes) -> list[list]:
    """[name, payload bytes, compress_type] of each member of a valid archive."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [[i.filename, z.read(i), i.compress_type] for i in z.infolist()]


def archive_of(members) -> bytes:
    import warnings
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(buffer, "w") as z:
            for name, payload, compress in members:
                z.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), payload,
                           compress_type=compress)
    return buffer.getvalue()


def split_npy(payload: bytes):
    """(header dict, data bytes) of a .npy member, or None."""
    from numpy.lib import format as npy_format
    f = io.BytesIO(payload)
    try:
        version = npy_format.read_magic(f)
        reader = (npy_format.read_array_header_1_0 if version == (1, 0)
                  else npy_format.read_array_header_2_0)
        shape, fortran, dtype = reader(f)
    except Exception:
        return None
    return {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": fortran,
            "shape": shape}, payload[f.tell():]


def npy_of(header: dict, data: bytes, version=(1, 0)) -> bytes:
    from numpy.lib import format as npy_format
    f = io.BytesIO()
    try:
        (npy_format.write_array_header_1_0 if version == (1, 0)
         else npy_format.write_array_header_2_0)(f, header)
    except Exception:  # a header numpy will not even write: write it by hand
        text = repr(header).encode("latin1", "replace")
        f = io.BytesIO()
        f.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text)
    return f.getvalue() + data


def random_array(rng) -> np.ndarray:
    choice = rng.integers(9)
    shape = tuple(int(n) for n in rng.integers(0, 4, size=rng.integers(0, 3)))
    if choice == 0:
        return np.array([None, 1], dtype=object)  # pickled on save
    if choice == 1:
        return np.array(rng.choice(["relu", "tanh", "float32", "fastmlp.MLP", "", "x" * 300]))
    if choice == 2:
        return np.array(int(rng.integers(-2**62, 2**62)))
    if choice == 3:
        return np.array(b"bytes")
    if choice == 4:
        return np.zeros(shape, dtype=[("a", "<i4"), ("b", "<f8")])
    if choice == 5:
        return np.array(json.dumps({"epochs_done": 1}))
    dtype = rng.choice(["<f4", "<f8", ">f4", "<i8", "|b1", "<c8", "<U3", "<f2"])
    return np.ones(shape, dtype=dtype)


def npy_bytes(array: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, array, allow_pickle=True)
    return f.getvalue()


JUNK_VALUES = [-1, 0, 1, 2**53 + 1, 10**30, -(10**30), 10**400, 1.5, float("nan"), float("inf"),
               -0.0, True, False, None, "", "1", "x" * 100, [], [1, 2], [[1]], {}, {"a": 1},
               ["a"], [True, False], [1.0, None]]


def mutate_json(rng, text: str) -> str:
    choice = int(rng.choice(6, p=[0.1, 0.05, 0.2, 0.15, 0.2, 0.3]))
    if choice == 0:  # raw text damage
        at = int(rng.integers(len(text) + 1))
        return text[:at] + rng.choice(["", "{", "]", '"', "\\", "\x00", "NaN", "1e999"]) + \
            text[at + int(rng.integers(3)):]
    if choice == 1:
        depth = int(rng.choice([10, 1000, 100_000]))
        return "[" * depth + "]" * depth
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return text
    # a random path into the document
    parents = []
    node = document
    while isinstance(node, (dict, list)) and node and (not parents or rng.random() < 0.75):
        key = (rng.choice(list(node)) if isinstance(node, dict)
               else int(rng.integers(len(node))))
        parents.append((node, key))
        node = node[key]
    if not parents or rng.random() < 0.02:
        return json.dumps(copy.deepcopy(JUNK_VALUES[int(rng.integers(len(JUNK_VALUES)))]))
    parent, key = parents[-1]
    if choice == 2 and isinstance(parent, dict):
        del parent[key]
    elif choice == 3 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    elif choice == 4 and isinstance(parent, dict):
        parent[str(rng.choice(["bogus", "steps", "epochs_done", "dtype", "kind"]))] = \
            copy.deepcopy(JUNK_VALUES[int(rng.integers(len(JUNK_VALUES)))])
    else:
        parent[key] = copy.deepcopy(JUNK_VALUES[int(rng.integers(len(JUNK_VALUES)))])
    return json.dumps(document)


def zip_bomb(rng, name: str, header: dict) -> tuple[bytes, list]:
    """A deflated member of `megabytes` of zeros under `name`, declaring a matching shape."""
    megabytes = int(rng.choice([2, 8, 32]))
    header = dict(header, shape=(megabytes << 20 >> 2,), descr="<f4")
    payload = npy_of(header, bytes(megabytes << 20))
    return payload, [name, payload, zipfile.ZIP_DEFLATED]


def mutate_checkpoint_json(rng, members: list[list]) -> str | None:
    """An edit of the checkpoint's JSON member, in place; None if there is none."""
    checkpoint = next((m for m in members if m[0] == "checkpoint.npy"), None)
    split = split_npy(checkpoint[1]) if checkpoint is not None else None
    descr = split[0]["descr"] if split is not None else None
    if not (isinstance(descr, str) and descr.lstrip("<>|=").startswith("U")):
        return None
    try:
        text = str(np.frombuffer(split[1], dtype=descr).reshape(-1)[0])
    except (ValueError, IndexError, TypeError):
        text = ""
    new = mutate_json(rng, text)
    checkpoint[1] = npy_bytes(np.array(new))
    return f"JSON edit: {new[:120]!r}"


def mutate_members(rng, members: list[list]) -> str:
    """One structural mutation, in place; returns its description."""
    index = int(rng.integers(len(members)))
    name, payload, compress = members[index]
    choice = int(rng.integers(9))
    if choice == 0:  # rename
        new = str(rng.choice(["W9.npy", "b0.npy", "optim.7.exp_avg.npy", "optim.0.zz.npy",
                              "opt_a0.npy", "checkpoint.npy", "x", "../evil.npy", "W0",
                              "format.npy", "dir/", "optim.00.exp_avg.npy"]))
        members[index][0] = new
        return f"rename {name} -> {new}"
    if choice == 1:
        members.append(list(members[index]))
        return f"duplicate {name}"
    if choice == 2:
        del members[index]
        return f"delete {name}"
    if choice == 3:
        array = random_array(rng)
        members[index][1] = npy_bytes(array)
        return f"replace {name} with {array.dtype} {array.shape}"
    if choice == 4:
        members[index][2] = zipfile.ZIP_DEFLATED
        return f"deflate {name}"
    split = split_npy(payload)
    if split is None:
        members[index][1] = payload[: int(rng.integers(len(payload) + 1))]
        return f"truncate payload of {name}"
    header, data = split
    if choice == 5:  # shape inflation, data as it was
        shape = list(header["shape"]) or [1]
        axis = int(rng.integers(len(shape)))
        shape[axis] = int(max(shape[axis], 1) * 10 ** int(rng.integers(1, 13)))
        header["shape"] = tuple(shape)
        members[index][1] = npy_of(header, data, version=(1, 0) if rng.random() < 0.5 else (2, 0))
        return f"inflate {name} to {tuple(shape)}"
    if choice == 6:  # header edit
        field = rng.choice(["descr", "shape", "fortran_order"])
        header[field] = {
            "descr": lambda: str(rng.choice(["<f4", "<f8", "|O", "<i8", "|b1", "<U5", ">f4",
                                             "|V0", "|V8", "<U0", "<m8[s]", "|S0"])),
            "shape": lambda: tuple(int(n) for n in rng.choice(
                [-1, 0, 1, 2, 3, 4, 7, 2**31, 2**62], size=rng.integers(0, 4))),
            "fortran_order": lambda: bool(rng.random() < 0.5)}[field]()
        members[index][1] = npy_of(header, data)
        return f"header of {name}: {field} = {header[field]!r}"
    if choice == 7:
        payload, members[index] = zip_bomb(rng, name, header)
        return f"zip bomb of {len(payload) >> 20} MB as {name}"
    if name == "checkpoint.npy" or rng.random() < 0.3:
        edit = mutate_checkpoint_json(rng, members)
        if edit is not None:
            return edit
    members[index][1] = payload + bytes(int(rng.integers(1, 64)))
    return f"append bytes to {name}"


def mutate_bytes(rng, data: bytes) -> tuple[bytes, str]:
    choice = int(rng.integers(4))
    data = bytearray(data)
    if choice == 0 and data:
        positions = rng.integers(len(data), size=rng.integers(1, 9))
        for p in positions:
            data[p] ^= int(rng.integers(1, 256))
        return bytes(data), f"flip bytes at {sorted(int(p) for p in positions)}"
    if choice == 1:
        at = int(rng.integers(len(data) + 1))
        return bytes(data[:at]), f"truncate to {at}"
    if choice == 2:  # a lying size in the central directory (uncompressed or compressed)
        at = data.rfind(b"PK\x01\x02", 0, max(1, int(rng.integers(len(data) + 1))))
        if at < 0:
            at = data.find(b"PK\x01\x02")
        if at >= 0:
            field = int(rng.choice([20, 24]))
            value = int(rng.choice([0, 1, 2**31, 2**32 - 1, 4 << 30, 10**9]))
            data[at + field:at + field + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
            return bytes(data), f"central directory size field {field} at {at} = {value}"
    at = int(rng.integers(len(data) + 1))
    return bytes(data[:at] + rng.bytes(int(rng.integers(1, 32))) + data[at:]), f"insert at {at}"


def make_case(rng, files: dict[str, bytes]) -> tuple[str, bytes, list[str]]:
    kind = str(rng.choice(sorted(files)))
    data = files[kind]
    steps = []
    if kind.startswith("ckpt") and rng.random() < 0.4:  # only JSON edits: reach _resume
        members = members_of(data)
        for _ in range(int(rng.integers(1, 3))):
            steps.append(mutate_checkpoint_json(rng, members))
        return kind, archive_of(members), steps
    if rng.random() < 0.8:
        members = members_of(data)
        for _ in range(int(rng.integers(1, 4))):
            if not members:
                break
            steps.append(mutate_members(rng, members))
        data = archive_of(members)
    if rng.random() < 0.35 or not steps:
        data, step = mutate_bytes(rng, data)
        steps.append(step)
    if rng.random() < 0.02:
        data, steps = rng.choice([b"", b"a,b\n1,2\n", b"\x93NUMPY\x01\x00"]), ["replaced whole"]
    return kind, bytes(data), steps


# ---- the child: read every case --------------------------------------------------------------

def exercise(path: str) -> list[str]:
    """Each reader on path; the unexpected outcomes (exceptions other than ALLOWED)."""
    from fastmlp import MLP, io as fio
    from fastmlp._training import History, _resume
    problems = []

    def attempt(label, call):
        try:
            return call()
        except ALLOWED:
            return None
        except BaseException as exc:  # noqa: BLE001 -- exactly what is being checked
            if isinstance(exc, KeyboardInterrupt):
                raise
            problems.append(f"{label}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            return None

    attempt("MLP.load", lambda: MLP.load(path))
    read = attempt("io.read_checkpoint", lambda: fio.read_checkpoint(path))
    if read is not None:
        record, _, meta = read

        def resume():
            model = MLP.from_record(record)
            optimizer, epoch = _resume(model, path, np.random.default_rng(0), History(),
                                       meta["batch_size"], meta["shuffle"])
            assert isinstance(epoch, int) and epoch >= 0
        attempt("_training._resume", resume)
    attempt("io.read_npz", lambda: fio.read_npz(path))
    attempt("io.read_npz(allowed, max_bytes)",
            lambda: fio.read_npz(path, allowed={"X", "y", "W0"}, max_bytes=1 << 20))
    return problems


def child(seed: int, seconds: float, directory: str) -> int:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    files = corpus(directory)
    path = os.path.join(directory, "case.npz")
    progress = os.path.join(directory, "progress")
    deadline = time.monotonic() + seconds
    case = 0
    failures = 0
    while time.monotonic() < deadline:
        rng = np.random.default_rng([seed, case])
        kind, data, steps = make_case(rng, files)
        with open(path, "wb") as f:
            f.write(data)
        with open(progress, "w") as f:  # what the parent reports if this case crashes us
            f.write(f"case {case}: {kind}: {steps}")
        problems = exercise(path)
        if problems:
            failures += 1
            with open(os.path.join(directory, f"failure-{case}.npz"), "wb") as f:
                f.write(data)
            print(f"FAIL seed={seed} case={case} ({kind}: {steps}):\n" + "\n".join(problems),
                  flush=True)
            if failures >= 5:
                break
        case += 1
    print(f"cases {case}, failures {failures}", flush=True)
    return 1 if failures else 0


def replay(seed: int, case: int, directory: str) -> str:
    """The file of case `case` of seed `seed` (for debugging a failure)."""
    files = corpus(directory)
    kind, data, steps = make_case(np.random.default_rng([seed, case]), files)
    path = os.path.join(directory, f"replay-{seed}-{case}.npz")
    with open(path, "wb") as f:
        f.write(data)
    print(kind, steps)
    return path


# ---- the test --------------------------------------------------------------------------------

def test_readers_survive_mutated_archives(tmp_path):
    seconds = float(os.environ.get("FASTMLP_FUZZ_SECONDS", "3"))
    seed_text = os.environ.get("FASTMLP_FUZZ_SEED", str(DEFAULT_SEED))
    seed = int.from_bytes(os.urandom(4), "little") if seed_text == "random" else int(seed_text)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               FASTMLP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, __file__, str(seed), str(seconds), str(tmp_path)],
                            capture_output=True, text=True, timeout=seconds + 300, env=env)
    progress = tmp_path / "progress"
    last = progress.read_text() if progress.exists() else "(before the first case)"
    assert result.returncode == 0, (
        f"fuzzing failed with FASTMLP_FUZZ_SEED={seed} (exit status {result.returncode}; the "
        f"last case started: {last}); replay a case with "
        f"`python tests/test_fuzz.py replay {seed} CASE DIR`\n"
        f"{result.stdout[-20000:]}\n{result.stderr[-5000:]}")
    print(f"seed {seed}: {result.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    if sys.argv[1] == "replay":
        replay(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(child(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]))

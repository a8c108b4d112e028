"""save/load: bit-exact round trips, atomic writes, and refusal of anything malformed."""

import os
import zipfile

import numpy as np
import pytest

from fastmlp import MLP
from fastmlp.io import FORMAT_VERSION


@pytest.fixture
def model():
    m = MLP([5, 7, 3], dtype="float32", seed=0)
    m.biases[0] = np.arange(7) / 10
    return m


def archive_entries(model):
    """The entries save() writes, for building hand-edited files."""
    entries = {
        "format": np.array("fastmlp.MLP"), "format_version": np.array(FORMAT_VERSION),
        "layer_sizes": np.array(model.layer_sizes), "activation": np.array(model.activation),
        "output": np.array(model.output), "dtype": np.array(model.dtype.name),
    }
    for i, (w, b) in enumerate(zip(model.weights, model.biases)):
        entries[f"W{i}"], entries[f"b{i}"] = w, b
    return entries


@pytest.mark.parametrize("dtype, output, sizes", [("float32", "softmax", [5, 7, 3]),
                                                  ("float64", "sigmoid", [5, 4, 6, 1])])
def test_round_trip_is_bit_exact(tmp_path, dtype, output, sizes):
    m = MLP(sizes, dtype=dtype, output=output, seed=1)
    X = np.random.default_rng(0).normal(size=(20, 5))
    path = tmp_path / "model.bin"  # any name: no ".npz" is appended
    m.save(path)
    assert os.listdir(tmp_path) == ["model.bin"]  # no temporary file left behind
    loaded = MLP.load(path)
    assert (loaded.layer_sizes, loaded.output, loaded.dtype) == (m.layer_sizes, output, np.dtype(dtype))
    np.testing.assert_array_equal(loaded.predict_proba(X), m.predict_proba(X))
    for a, b in zip(loaded.weights + loaded.biases, m.weights + m.biases):
        np.testing.assert_array_equal(a, b)


def test_save_replaces_an_existing_file_and_keeps_it_on_failure(tmp_path, model, monkeypatch):
    path = tmp_path / "m.npz"
    MLP([5, 2], seed=3).save(path)
    model.save(path)
    assert MLP.load(path).layer_sizes == (5, 7, 3)

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        MLP([5, 2], seed=3).save(path)
    assert MLP.load(path).layer_sizes == (5, 7, 3)  # the good file is intact
    assert os.listdir(tmp_path) == ["m.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        MLP.load(tmp_path / "nope.npz")


def corrupt(entries):
    return entries


@pytest.mark.parametrize("edit, match", [
    (lambda e: e.pop("W1"), "missing"),
    (lambda e: e.update(extra=np.zeros(2)), "unexpected"),
    (lambda e: e.update(format_version=np.array(99)), "format_version 99"),
    (lambda e: e.update(format=np.array("something else")), "format"),
    (lambda e: e.update(W0=np.zeros((7, 4), np.float32)), r"W0 has shape \(7, 4\)"),
    (lambda e: e.update(b1=np.zeros(3, np.float64)), "b1 has dtype float64"),
    (lambda e: e.update(b0=np.full(7, np.nan, np.float32)), "NaN"),
    (lambda e: e.update(layer_sizes=np.array([5, 7, 3, 2])), "missing"),
    (lambda e: e.update(layer_sizes=np.array([5, 10**12, 3])), "shape"),
    (lambda e: e.update(activation=np.array("sin")), "activation"),
    (lambda e: e.update(dtype=np.array(3)), "string"),
])
def test_hand_edited_files_are_rejected(tmp_path, model, edit, match):
    entries = archive_entries(model)
    edit(entries)
    path = tmp_path / "edited.npz"
    np.savez(path, **entries)
    with pytest.raises(ValueError, match=match):
        MLP.load(path)


def test_pickled_objects_are_never_loaded(tmp_path, model):
    entries = archive_entries(model)
    entries["W0"] = np.array([object()] * 35, dtype=object).reshape(7, 5)
    path = tmp_path / "pickled.npz"
    np.savez(path, **entries)
    with pytest.raises(ValueError, match="W0. holds pickled Python objects"):
        MLP.load(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip"])
def test_damaged_files_are_rejected(tmp_path, model, damage):
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"this is not a zip file" * 10
    elif damage == "empty":
        data = b""
    else:  # flip bytes inside the stored arrays: the zip CRC check must catch it
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:]
    path.write_bytes(data)
    with pytest.raises(ValueError):
        MLP.load(path)


def test_archive_is_a_plain_npz(tmp_path, model):
    path = tmp_path / "m.npz"
    model.save(path)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(f"{k}.npy" for k in archive_entries(model))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_checkpoints_of_fastmlp_0_1_still_resume(tmp_path, kind):
    """0.1 wrote the optimizer as {"kind": ..., hyper-parameters} and arrays opt_a{i}/opt_b{i};
    such a checkpoint resumes to the same weights as one written today."""
    import json

    from fastmlp import SGD, Adam
    from fastmlp.io import read_checkpoint

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 3, size=60)
    make = (lambda: SGD(lr=0.05, momentum=0.9)) if kind == "sgd" else (lambda: Adam(lr=1e-2))
    new = tmp_path / "new.npz"
    MLP([4, 6, 3], seed=0, dtype="float64").fit(X, y, epochs=2, optimizer=make(), seed=1,
                                                checkpoint=new)
    with np.load(new) as archive:
        arrays = dict(archive)
    meta = json.loads(str(arrays.pop("checkpoint")))
    state = meta.pop("optimizer")
    hyper = state["hyperparameters"]
    if kind == "sgd":
        old = {"kind": "sgd", "lr": hyper["lr"], "momentum": hyper["momentum"],
               "weight_decay": hyper["weight_decay"], "nesterov": hyper["nesterov"],
               "first_step": [not s for s in state["started"]]}
        names = ["momentum_buffer"]
    else:
        old = {"kind": "adam", "lr": hyper["lr"], "beta1": hyper["betas"][0],
               "beta2": hyper["betas"][1], "eps": hyper["eps"],
               "weight_decay": hyper["weight_decay"], "steps": state["steps"], "first_step": []}
        names = ["exp_avg", "exp_avg_sq"]
    for i in range(4):
        for ab, name in zip("ab", names):
            arrays[f"opt_{ab}{i}"] = arrays.pop(f"optim.{i}.{name}")
    arrays["checkpoint"] = np.array(json.dumps(dict(meta, optimizer=old)))
    legacy = tmp_path / "legacy.npz"
    np.savez(legacy, **arrays)
    _, optimizer, _ = read_checkpoint(legacy)
    _, current, _ = read_checkpoint(new)
    assert repr(optimizer) == repr(current) and optimizer.steps == current.steps
    for a, b in zip(optimizer.state_dict()["state"], current.state_dict()["state"]):
        for name in names:
            np.testing.assert_array_equal(a[name], b[name])
    resumed = [MLP([4, 6, 3], seed=0, dtype="float64") for _ in range(2)]
    for model, path in zip(resumed, (legacy, new)):
        model.fit(X, y, epochs=4, optimizer=make(), seed=1, checkpoint=path, resume=True)
    for a, b in zip(resumed[0].weights, resumed[1].weights):
        np.testing.assert_array_equal(a, b)


# ---- memory bounded by what the file justifies -----------------------------------------------

def npy_bytes(shape, descr="<f4", data=b"", version=(1, 0)):
    """A .npy member whose header declares `shape` but which holds only `data`."""
    import io as _io
    from numpy.lib import format as npy_format
    buffer = _io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    if version == (1, 0):
        npy_format.write_array_header_1_0(buffer, header)
    else:
        npy_format.write_array_header_2_0(buffer, header)
    return buffer.getvalue() + data


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    """members: name -> array (saved as .npy) or raw bytes of the member."""
    import io as _io
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                buffer = _io.BytesIO()
                np.lib.format.write_array(buffer, value, allow_pickle=True)
                value = buffer.getvalue()
            z.writestr(name if name.endswith(".npy") else name + ".npy", value)


def write_bomb(path, members, name, shape, dtype="<f4"):
    """`members` stored, plus a deflated member `name` declaring `shape` of zeros, all there
    (a real zip bomb: ~1000:1)."""
    write_zip(path, members)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        with z.open(name + ".npy", "w", force_zip64=True) as f:
            f.write(npy_bytes(shape, dtype))
            zeros = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                f.write(zeros)
            f.write(bytes(nbytes & ((1 << 20) - 1)))


def peak_traced_bytes(call):
    """Peak bytes NumPy and Python allocated during call() (numpy reports to tracemalloc)."""
    import tracemalloc
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("case", ["inflated header", "inflated header, consistent sizes",
                                  "header v2", "inflated file_size"])
def test_declared_shapes_beyond_the_file_are_refused_before_allocating(tmp_path, model, case):
    """A few-KB file whose .npy header declares 10^6 x 10^6 floats: refused from the header,
    in a few KB of memory (it raised MemoryError)."""
    entries = archive_entries(model)
    huge = (10**6, 10**6)
    if case == "inflated header, consistent sizes":
        entries["layer_sizes"] = np.array([10**6, 10**6])
        entries = {k: v for k, v in entries.items() if k not in ("W1", "b1")}
        entries["b0"] = npy_bytes((10**6,), data=bytes(28))
    entries["W0"] = npy_bytes(huge, data=bytes(140), version=(2, 0) if case == "header v2"
                              else (1, 0))
    path = tmp_path / "m.npz"
    write_zip(path, entries)
    if case == "inflated file_size":  # the central directory lies about W0's size too
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("W0.npy")
        at = data.rfind(b"PK\x01\x02", 0, data.find(b"W0.npy", data.find(b"PK\x01\x02")))
        data[at + 20:at + 28] = (4 * 10**9).to_bytes(4, "little") * 2  # compressed, plain
        path.write_bytes(bytes(data))
        assert info.file_size < 1000
    assert path.stat().st_size < 5000
    peak = peak_traced_bytes(lambda: pytest.raises(ValueError, MLP.load, path))
    assert peak < 1 << 20
    with pytest.raises(ValueError, match="'W0' declares shape|more data than the file holds"):
        MLP.load(path)
    peak = peak_traced_bytes(lambda: pytest.raises(ValueError, fastmlp_io().read_npz, path))
    assert peak < 1 << 20


def fastmlp_io():
    from fastmlp import io
    return io


def test_zip_bombs_are_refused_before_decompressing(tmp_path, model):
    """A deflated member of 64 MB zeros in ~64 KB, declared consistently with layer_sizes:
    refused by its compression ratio, without decompressing it (it drove RSS to 3 GB)."""
    entries = archive_entries(model)
    entries["layer_sizes"] = np.array([4096, 4096])
    del entries["W1"], entries["b1"]
    entries["b0"] = np.zeros(4096, np.float32)
    path = tmp_path / "bomb.npz"
    write_bomb(path, {k: v for k, v in entries.items() if k != "W0"}, "W0", (4096, 4096))
    assert path.stat().st_size < 200_000
    peak = peak_traced_bytes(lambda: pytest.raises(ValueError, MLP.load, path))
    assert peak < 4 << 20
    with pytest.raises(ValueError, match="zip bomb"):
        MLP.load(path)
    io = fastmlp_io()
    with pytest.raises(ValueError, match="zip bomb"):
        io.read_npz(path)
    # without the ratio check, max_bytes still bounds it; and other members can be read alone
    with pytest.raises(ValueError, match="more than the 1000000 allowed"):
        io.read_npz(path, max_ratio=None, max_bytes=10**6)
    assert set(io.read_npz(path, allowed={"b0", "dtype"})) == {"b0", "dtype"}
    assert "W0" in io.npz_names(path)


def test_read_npz_reads_plain_and_compressed_archives_like_np_load(tmp_path):
    io = fastmlp_io()
    rng = np.random.default_rng(0)
    arrays = {"X": rng.normal(size=(30, 4)), "y": rng.integers(0, 3, 30),
              "F": np.asfortranarray(rng.normal(size=(3, 5))), "s": np.array(["a", "bc"]),
              "e": np.zeros((0, 3)), "big_endian": np.arange(5, dtype=">i4"),
              "structured": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / "data.npz"
        save(path, **arrays)
        read = io.read_npz(path)
        assert set(read) == set(arrays)
        for key, value in arrays.items():
            np.testing.assert_array_equal(read[key], value)
            assert read[key].dtype == value.dtype and read[key].flags.writeable
    assert set(io.read_npz(path, allowed={"X", "nope"})) == {"X"}
    with pytest.raises(ValueError, match="more than the 100 allowed"):
        io.read_npz(path, allowed={"X"}, max_bytes=100)


def test_duplicate_members_and_foreign_members_are_refused(tmp_path, model):
    entries = archive_entries(model)
    path = tmp_path / "dup.npz"
    write_zip(path, entries)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("W0.npy", b"\x93NUMPY")
    with pytest.raises(ValueError, match="appears twice"):
        MLP.load(path)
    write_zip(path, entries)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("notes.txt", b"hello")
    with pytest.raises(ValueError, match="unexpected entries"):
        MLP.load(path)
    with pytest.raises(ValueError, match="notes.txt' is not a .npy array"):
        fastmlp_io().read_npz(path)


# ---- clear errors for files that are not fastmlp archives -----------------------------------

@pytest.mark.parametrize("content, match", [
    (b"", "it is an empty file"),
    ("npy", r"single \.npy array"),
    (b"a,b,y\n1,2,0\n3,4,1\n", "text file"),
    ("Hello, w\xf6rld: not a model\n".encode(), "text file"),
    (bytes(range(256)) * 4, "not a zip archive"),
    ("data npz", "no 'format' entry.*'X', 'y'"),
])
def test_files_that_are_not_models_say_what_they_are(tmp_path, model, content, match):
    path = tmp_path / "file.npz"
    if content == "npy":
        np.save(path, np.zeros(3))
        path = tmp_path / "file.npz.npy"
    elif content == "data npz":
        np.savez(path, X=np.zeros((2, 3)), y=np.zeros(2))
    else:
        path.write_bytes(content)
    for load in (MLP.load, lambda p: fastmlp_io().read_checkpoint(p)):
        with pytest.raises(ValueError, match=match) as info:
            load(path)
        assert "pickled" not in str(info.value)


@pytest.mark.parametrize("key", ["format", "dtype", "activation", "output"])
@pytest.mark.parametrize("junk, match", [
    (np.array(3), "must be a string, got a int64 array of shape"),
    (np.array(2.5), "must be a string, got a float64"),
    (np.array(["relu", "relu"]), r"must be a string, got a <U4 array of shape \(2,\)"),
    (np.array(b"relu"), "must be a string, got a |S4"),
    (np.array([None], dtype=object), "holds pickled Python objects"),
])
def test_junk_header_entries_are_refused_clearly(tmp_path, model, key, junk, match):
    entries = archive_entries(model)
    entries[key] = junk
    path = tmp_path / "junk.npz"
    write_zip(path, entries)
    with pytest.raises(ValueError, match=f"{key}.*{match}" if "pickled" not in match
                       else match) as info:
        MLP.load(path)
    assert ("pickled" in str(info.value)) == (junk.dtype == object)


@pytest.mark.parametrize("junk, match", [
    (np.array([5.0, 7.0, 3.0]), "layer_sizes must be a 1-D integer array"),
    (np.array([[5, 7, 3]]), "layer_sizes must be a 1-D integer array"),
    (np.array([5, 0, 3]), "layer_sizes must be positive"),
    (np.array([5, -7, 3]), "layer_sizes must be positive"),
    (np.arange(20000), "layer_sizes' is 160000 bytes"),
    (np.array(["5", "7"]), "layer_sizes must be a 1-D integer array"),
])
def test_junk_layer_sizes_are_refused_clearly(tmp_path, model, junk, match):
    entries = archive_entries(model)
    entries["layer_sizes"] = junk
    path = tmp_path / "junk.npz"
    write_zip(path, entries)
    with pytest.raises(ValueError, match=match):
        MLP.load(path)


# ---- file modes, symbolic links, temporaries ------------------------------------------------

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and signals")


@posix_only
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path, model, umask):
    """(Every file went out 0600: tempfile.mkstemp's mode.)"""
    from fastmlp import SGD
    from fastmlp._tabular import atomic_write
    previous = os.umask(umask)
    try:
        model.save(tmp_path / "m.npz")
        atomic_write(tmp_path / "m.npz.meta.json", b"{}")
        rng = np.random.default_rng(0)
        model.fit(rng.normal(size=(10, 5)), rng.integers(0, 3, 10), epochs=1,
                  optimizer=SGD(lr=0.1), checkpoint=tmp_path / "c.npz")
    finally:
        os.umask(previous)
    for name in ("m.npz", "m.npz.meta.json", "c.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    os.chmod(tmp_path / "m.npz", 0o640)
    model.save(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "m.npz", "m.npz.meta.json"]


@posix_only
def test_saving_through_a_symbolic_link_updates_its_target(tmp_path, model):
    target_dir = tmp_path / "store"
    target_dir.mkdir()
    (tmp_path / "link.npz").symlink_to(target_dir / "m.npz")  # dangling at first
    MLP([5, 2], seed=3).save(tmp_path / "link.npz")
    os.chmod(target_dir / "m.npz", 0o604)
    model.save(tmp_path / "link.npz")
    assert (tmp_path / "link.npz").is_symlink()
    assert MLP.load(target_dir / "m.npz").layer_sizes == (5, 7, 3)
    assert (target_dir / "m.npz").stat().st_mode & 0o777 == 0o604
    assert sorted(os.listdir(target_dir)) == ["m.npz"]  # the temporary lived beside the target
    assert sorted(os.listdir(tmp_path)) == ["link.npz", "store"]


def dead_pid():
    import subprocess
    import sys
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@posix_only
def test_a_save_killed_midway_leaves_a_temporary_the_next_save_removes(tmp_path, model):
    """kill -9 during a save left .fastmlp-*.tmp files forever (25 kills: 271 MB)."""
    import subprocess
    import sys
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    script = ("import os, signal, sys\n"
              "from fastmlp.io import write_atomically\n"
              "def write(f):\n"
              "    f.write(b'partial' * 1000); f.flush()\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "write_atomically(sys.argv[1], write)\n")
    for _ in range(3):
        assert subprocess.run([sys.executable, "-c", script, str(path)]).returncode == -9
    # each killed save removed the one before it: one temporary left, the last one's
    left = [n for n in os.listdir(tmp_path) if n != "m.npz"]
    assert len(left) == 1 and left[0].startswith(".m.npz.fastmlp-")
    assert path.read_bytes() == before  # the old file is intact
    model.save(path)
    assert os.listdir(tmp_path) == ["m.npz"]


@posix_only
def test_only_stale_temporaries_of_this_target_are_removed(tmp_path, model):
    io = fastmlp_io()
    host = io._host_tag()
    dead, alive = dead_pid(), os.getppid()
    files = {
        f".m.npz.fastmlp-{host}-{dead}-0123abcd.tmp": False,    # ours, writer dead: removed
        f".m.npz.fastmlp-{host}-{alive}-0123abcd.tmp": True,    # a live writer's: kept
        f".m.npz.fastmlp-{host}-{os.getpid()}-0123abcd.tmp": True,  # this process's: kept
        f".m.npz.fastmlp-00000000-{dead}-0123abcd.tmp": True,   # another host's, recent: kept
        f".other.npz.fastmlp-{host}-{dead}-0123abcd.tmp": True,  # another target's: kept
        f".m.npz.fastmlp-{host}-{dead}-0123abcd.tmp.keep": True,  # not the pattern: kept
        ".fastmlp-abc.tmp": True, "m.npz.tmp": True, "notes.txt": True,
        f".m.npz.fastmlp-00000000-{alive}-aaaaaaaa.tmp": False,  # any writer, a week old
    }
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    week_old = os.path.getmtime(tmp_path / "notes.txt") - 8 * 24 * 3600
    os.utime(tmp_path / f".m.npz.fastmlp-00000000-{alive}-aaaaaaaa.tmp", (week_old, week_old))
    os.mkdir(tmp_path / f".m.npz.fastmlp-{host}-{dead}-99999999.tmp")  # a directory: kept
    model.save(tmp_path / "m.npz")
    kept = sorted(n for n in os.listdir(tmp_path) if n != "m.npz")
    assert kept == sorted([n for n, keep in files.items() if keep]
                          + [f".m.npz.fastmlp-{host}-{dead}-99999999.tmp"])


# ---- hand-edited checkpoints ----------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint_entries(tmp_path_factory):
    import json
    from fastmlp import Adam
    path = tmp_path_factory.mktemp("ckpt") / "c.npz"
    rng = np.random.default_rng(0)
    MLP([4, 6, 3], seed=0).fit(rng.normal(size=(40, 4)), rng.integers(0, 3, 40), epochs=2,
                               optimizer=Adam(lr=1e-2), checkpoint=path,
                               validation_data=(rng.normal(size=(5, 4)), rng.integers(0, 3, 5)))
    with np.load(path) as archive:
        arrays = dict(archive)
    return arrays, json.loads(str(arrays["checkpoint"]))


def nested(depth):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(epochs_done=-1), "'epochs_done' must be between 0"),
    (lambda m: m.update(epochs_done=2.0), "'epochs_done' must be an integer"),
    (lambda m: m.update(epochs_done=True), "'epochs_done' must be an integer"),
    (lambda m: m.update(epochs_done="2"), "'epochs_done' must be an integer"),
    (lambda m: m.update(epochs_done=10**400), "'epochs_done' must be between"),
    (lambda m: m.update(steps=-5), "'steps' must be between 0"),
    (lambda m: m.update(batch_size=0), "'batch_size' must be between 1"),
    (lambda m: m.update(batch_size=-3), "'batch_size' must be between 1"),
    (lambda m: m.update(batch_size=None), "'batch_size' must be an integer"),
    (lambda m: m.update(shuffle="yes"), "'shuffle' must be true, false or"),
    (lambda m: m.update(shuffle=1), "'shuffle' must be true, false or"),
    (lambda m: m.update(rng_state=[1, 2]), "'rng_state' must be an object"),
    (lambda m: m.update(rng_state={"bit_generator": "MT19937"}), "'rng_state' must be the state of a PCG64"),
    (lambda m: m["rng_state"].update(state="x"), "'rng_state' is not a valid"),
    (lambda m: m["rng_state"]["state"].update(state=-(10**400)), "'rng_state' is not a valid"),
    (lambda m: m.update(history=[1, 2]), "'history' must be an object"),
    (lambda m: m["history"].update(loss=["a", "b"]), r"'history.loss' must hold numbers"),
    (lambda m: m["history"].update(loss=[True, 1.0]), r"'history.loss' must hold numbers"),
    (lambda m: m["history"].update(loss=[10**400, 1.0]), r"'history.loss' holds a number too large"),
    (lambda m: m["history"].update(loss=3.0), r"'history.loss' must be a list"),
    (lambda m: m["history"].update(val_loss=[1.0, 2.0, 3.0]), r"'history.val_loss' has 3 entries"),
    (lambda m: m["history"].update(samples_per_second=[1.0]), r"'history.samples_per_second' has 1"),
    (lambda m: m["history"].update(one_thread_fallback=[0, 1]), "one_thread_fallback' must hold true/false"),
    (lambda m: m["history"].update(bogus=[]), "unknown entries"),
    (lambda m: m["history"].update(loss=[1.0, 2.0, 3.0]), "more than epochs_done"),
    (lambda m: m.pop("rng_state"), "lacks 'rng_state'"),
    (lambda m: m.update(optimizer=[1]), "'optimizer' must be an object"),
    (lambda m: m["optimizer"].update(steps=-1), "'optimizer'.*steps"),
    (lambda m: m["optimizer"].update(optimizer="Nope"), "'optimizer'.*unknown optimizer"),
    (lambda m: m["optimizer"].update(hyperparameters=[]), "'optimizer'"),
    (lambda m: m["optimizer"].update(started=None), "'optimizer'"),
])
def test_hand_edited_checkpoints_are_refused_naming_the_field(tmp_path, checkpoint_entries,
                                                              edit, match):
    import copy
    import json
    arrays, meta = checkpoint_entries
    meta = copy.deepcopy(meta)
    edit(meta)
    path = tmp_path / "edited.npz"
    np.savez(path, **dict(arrays, checkpoint=np.array(json.dumps(meta))))
    with pytest.raises(ValueError, match=f"edited.npz' is not a valid fastmlp checkpoint: .*{match}"):
        fastmlp_io().read_checkpoint(path)


@pytest.mark.parametrize("text, match", [
    (nested(100_000), "nested too deeply"),
    ('{"a": ' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
    ("{not json", "not valid JSON"),
    ('"a string"', "must be a JSON object"),
    ("9" * 5000, "not valid JSON|JSON object|digits"),
])
def test_malformed_checkpoint_json_is_refused(tmp_path, checkpoint_entries, text, match):
    arrays, _ = checkpoint_entries
    path = tmp_path / "edited.npz"
    np.savez(path, **dict(arrays, checkpoint=np.array(text)))
    with pytest.raises(ValueError, match=match):
        fastmlp_io().read_checkpoint(path)


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.update({"optim.0.exp_avg": np.zeros((5, 5), np.float32)}), "optimizer state 'exp_avg' of parameter 0 has shape"),
    (lambda a: a.update({"optim.0.exp_avg": np.zeros((6, 4))}), "has dtype float64"),
    (lambda a: a.update({"optim.9.exp_avg": np.zeros(3, np.float32)}), "'optim.9.exp_avg' names no parameter"),
    (lambda a: a.update({"optim.x.exp_avg": np.zeros(3, np.float32)}), "names no parameter"),
    (lambda a: a.update({f"optim.0.s{i}": np.zeros((6, 4), np.float32) for i in range(5)}), "more than 4"),
    (lambda a: a.pop("optim.3.exp_avg_sq"), "'optimizer'.*parameter 3"),
    (lambda a: a.update({"checkpoint": np.array(["{}", "{}"])}), "'checkpoint' must be a string"),
])
def test_malformed_checkpoint_arrays_are_refused(tmp_path, checkpoint_entries, edit, match):
    arrays, _ = checkpoint_entries
    arrays = dict(arrays)
    edit(arrays)
    path = tmp_path / "edited.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        fastmlp_io().read_checkpoint(path)


def test_a_valid_checkpoint_reads_back_normalised(tmp_path, checkpoint_entries):
    arrays, meta = checkpoint_entries
    path = tmp_path / "c.npz"
    np.savez(path, **arrays)
    record, optimizer, read = fastmlp_io().read_checkpoint(path)
    assert read["epochs_done"] == 2 and read["batch_size"] == meta["batch_size"]
    assert read["history"]["loss"] == meta["history"]["loss"]
    assert record.layer_sizes == [4, 6, 3] and optimizer.steps == meta["optimizer"]["steps"]


@pytest.mark.parametrize("save", ["mlp", "quantized", "onnx"])
def test_saving_to_an_empty_path_or_a_directory_is_refused_before_writing(tmp_path, save,
                                                                         monkeypatch):
    """save("") wrote a temporary beside the working directory (realpath("") is the working
    directory) and failed at the rename with that temporary's name; a directory failed only
    after the whole file was written."""
    model = MLP([3, 4, 2], seed=0)
    if save == "onnx":
        pytest.importorskip("onnx")
    write = {"mlp": model.save, "quantized": model.quantize().save,
             "onnx": model.to_onnx}[save]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="empty"):
        write("")
    with pytest.raises(IsADirectoryError, match="directory"):
        write(tmp_path / "d")
    assert sorted(os.listdir(tmp_path)) == ["d"] and os.listdir(tmp_path / "d") == []
    assert not [n for n in os.listdir(tmp_path.parent) if n.endswith(".tmp")]


@pytest.mark.parametrize("save", ["mlp", "quantized"])
def test_saving_into_a_missing_directory_names_the_path_given(tmp_path, save):
    """The error named the temporary (".m.npz.fastmlp-<host>-<pid>-<random>.tmp"), a file the
    user never asked for."""
    model = MLP([3, 4, 2], seed=0)
    write = {"mlp": model.save, "quantized": model.quantize().save}[save]
    target = tmp_path / "missing" / "m.npz"
    with pytest.raises(FileNotFoundError) as raised:
        write(target)
    assert raised.value.filename == str(target) and ".tmp" not in str(raised.value)


def test_loading_an_int8_model_as_an_mlp_names_its_format(tmp_path):
    """MLP.load (and so the CLI) of a QuantizedMLP archive said "missing entries ['dtype']"."""
    MLP([3, 4, 2], seed=0).quantize().save(tmp_path / "q.npz")
    with pytest.raises(ValueError, match="format is 'fastmlp.QuantizedMLP'.*QuantizedMLP.load"):
        MLP.load(tmp_path / "q.npz")

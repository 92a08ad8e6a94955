"""Frames released from another thread, in any order, while the main thread waits in `next()`; frames read by
sequence from a second mapping (`RegionReader`), as LiberTEM's workers do; the control API."""

import threading
import time

import numpy as np
import pytest

import ringdaq
from sim_pattern import frame as sim_frame


def test_release_from_another_thread_while_next_waits(pipeline):
    with ringdaq.Subscription(pipeline.rt, lossless=True) as sub:
        errors = []
        # The main thread waits in next(); another thread reads counters and releases meanwhile: neither waits
        # behind the other, and nothing raises "Already mutably borrowed".
        def other():
            try:
                t = time.monotonic()
                for _ in range(50):
                    assert sub.missed == 0
                    sub.release([])
                    assert sub.released_upto == 0
                # 50 calls while next() waits: each at most a few ms, not 100 ms behind next().
                assert time.monotonic() - t < 2.5
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        th = threading.Thread(target=other)
        th.start()
        with pytest.raises(ringdaq.Timeout):
            sub.next(timeout=1.0)
        th.join()
        assert not errors, errors


def test_out_of_order_release_advances_the_gate_over_the_released_prefix(pipeline):
    ctl = ringdaq.Control(pipeline.rt)
    reader = ringdaq.RegionReader(pipeline.rt)
    assert reader.shape == (1860, 2048) and reader.supervisor_pid == ctl.status()["pid"]
    with ringdaq.Subscription(pipeline.rt, lossless=True) as sub:
        acq = ctl.acquire(6)                   # live-only: nothing is written
        sim = pipeline.simulate(6, 100, "--first-frame-id", "2")
        kept = []
        while len(kept) < 6:
            f = sub.next(timeout=20)
            if f.acquisition_id == acq:
                assert f.index == len(kept)
                kept.append(f.keep())
            else:
                f.release()
        del f
        first = kept[0]
        assert sub.released_upto == first      # kept frames are not released by their objects
        # Read by sequence from another mapping, converted on the way.
        out = np.empty((2, 1860, 2048), np.float32)
        reader.read_many(kept[:2], out, indices=[0, 1])
        assert np.array_equal(out[0], sim_frame(2)) and np.array_equal(out[1], sim_frame(3))
        assert np.array_equal(reader.read(kept[5], index=5), sim_frame(7))
        # A band of rows of several frames (LiberTEM's band tiles), the last rows included.
        band = np.empty((2, 60, 2048), np.float64)
        reader.read_many(kept[2:4], band, indices=[2, 3], rows=(1800, 1860))
        assert np.array_equal(band[0], sim_frame(4)[1800:]) and np.array_equal(band[1], sim_frame(5)[1800:])
        for bad in [(1800, 1861), (5, 5), (7, 3)]:
            with pytest.raises(ValueError, match="rows"):
                reader.read_many(kept[2:3], np.empty((1, 10, 2048), np.uint16), rows=bad)
        with pytest.raises(ValueError, match="holds 20480 elements"):
            reader.read_many(kept[2:3], np.empty((1, 10, 2048), np.uint16), rows=(0, 11))
        assert reader.frame_info(kept[4]) == (acq, 4, True)
        with pytest.raises(ringdaq.FrameOverwritten, match="not index 3"):
            reader.read(kept[4], index=3)
        # Released from another thread, the last ones first: the gate stays below the gap...
        th = threading.Thread(target=sub.release, args=(kept[3:],))
        th.start()
        th.join()
        assert sub.released_upto == first
        sub.release(kept[1])
        assert sub.released_upto == first
        # ...and moves over all of them once it closes.
        sub.release(kept[0])
        sub.release(kept[2])
        assert sub.released_upto == kept[-1] + 1
        sim.wait(timeout=60)
        st = ctl.wait(acq, timeout=30)
    assert st["state"] == "done" and st["ended"] == "complete" and st["live_only"] and st["path"] is None
    assert st["assigned"] == 6 and st["complete"] == 6
    assert not list(pipeline.root.glob("*.npy")), "a live-only acquisition writes nothing"
    # Long gone: the reader says so rather than returning another frame's pixels.
    with pytest.raises(ringdaq.FrameOverwritten):
        reader.read(kept[-1] + 1000)


def test_control_arms_stops_and_queries(pipeline, tmp_path):
    ctl = ringdaq.Control(pipeline.rt)
    st = ctl.status()
    assert [s["state"] for s in st["stages"]] == ["running"] * 3 and st["mode"] == "is"
    acq = ctl.acquire(None, tmp_path / "cont.npy")
    a = ctl.acquisition(acq)
    assert a["continuous"] and a["frames"] is None and a["path"] == str(tmp_path / "cont.npy")
    with pytest.raises(ringdaq.ControlError, match="still running"):
        ctl.acquire(5)
    ctl.stop()
    a = ctl.acquisition(acq)
    assert a["over"] and a["ended"] == "stopped"
    with pytest.raises(ringdaq.ControlError, match="at least one frame"):
        ctl.acquire(0)
    with pytest.raises(ValueError):
        ctl.acquire(5, sync="sometime")
    with pytest.raises(ringdaq.ControlError, match="no ringdaq is running"):
        ringdaq.Control(tmp_path / "nowhere").status()


def test_the_default_runtime_dir_is_the_clis(pipeline, monkeypatch):
    monkeypatch.setenv("RINGDAQ_RUNTIME_DIR", str(pipeline.rt))
    assert str(ringdaq.default_runtime_dir()) == str(pipeline.rt)
    with ringdaq.Subscription() as sub:        # no argument: the CLI's runtime directory
        assert sub.shape == (1860, 2048)
    assert ringdaq.Control().status()["pid"] == ringdaq.RegionReader().supervisor_pid
    monkeypatch.delenv("RINGDAQ_RUNTIME_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert str(ringdaq.default_runtime_dir()) == "/run/user/1234/ringdaq"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    import os
    assert str(ringdaq.default_runtime_dir()) == f"/tmp/ringdaq-{os.getuid()}"


def test_the_cli_arms_a_live_only_acquisition(pipeline):
    r = pipeline.cli("acquire", "--frames", "4", "--live")
    acq = int(r.stdout.strip())
    assert "consumers only" in r.stderr
    ctl = ringdaq.Control(pipeline.rt)
    assert ctl.acquisition(acq)["live_only"]
    sim = pipeline.simulate(8, 100)
    st = ctl.wait(acq, timeout=30)
    sim.wait(timeout=60)
    assert st["ended"] == "complete" and st["assigned"] == 4 and st["written"] == 4
    assert not list(pipeline.root.glob("*.npy"))
    # One or the other.
    assert pipeline.cli("acquire", "--frames", "4", "--live", "--out", "x.npy", check=False).returncode != 0
    assert pipeline.cli("acquire", "--frames", "4", check=False).returncode != 0

//! What `ringdaq sim` puts on the wire, received on loopback and checked with an independent decoder.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::Command;

use detector::k2;
use detector::pattern::pixel;
use detector::sim::SimReport;
use ringdaq_tests::{bin_path, bind_consecutive_udp};

/// The straightforward reading of a datagram: fields by offset, pixels bit by bit.
struct Plain {
    sync: u32,
    version: u8,
    flags: u8,
    block_count: u32,
    width: u16,
    height: u16,
    frame_id: u32,
    x: (u16, u16),
    y: (u16, u16),
    block_size: u32,
}

fn be(b: &[u8]) -> u32 {
    b.iter().fold(0, |a, &x| a << 8 | u32::from(x))
}

fn plain(d: &[u8]) -> Plain {
    Plain {
        sync: be(&d[0..4]),
        version: d[8],
        flags: d[9],
        block_count: be(&d[16..20]),
        width: be(&d[20..22]) as u16,
        height: be(&d[22..24]) as u16,
        frame_id: be(&d[24..28]),
        x: (be(&d[28..30]) as u16, be(&d[32..34]) as u16),
        y: (be(&d[30..32]) as u16, be(&d[34..36]) as u16),
        block_size: be(&d[36..40]),
    }
}

/// Pixel `k` (row-major within the block) of a 12-bit packed payload.
fn packed12(payload: &[u8], k: usize) -> u16 {
    let t = &payload[k / 2 * 3..k / 2 * 3 + 3];
    if k.is_multiple_of(2) {
        u16::from(t[0]) | (u16::from(t[1]) & 0xF) << 8
    } else {
        u16::from(t[1]) >> 4 | u16::from(t[2]) << 4
    }
}

fn receive_all(socks: &[UdpSocket], want: usize) -> Vec<(usize, Vec<u8>)> {
    for s in socks {
        s.set_nonblocking(true).unwrap();
        ringdaq_tests::grow_recv_buffer(s, 64 << 20);
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut idle = 0;
    while got.len() < want && idle < 20 {
        let mut fds: Vec<_> =
            socks.iter().map(|s| rustix::event::PollFd::new(s, rustix::event::PollFlags::IN)).collect();
        let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
        let n = rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0);
        idle = if n == 0 { idle + 1 } else { 0 };
        for (i, s) in socks.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                got.push((i, buf[..n].to_vec()));
            }
        }
    }
    got
}

fn sim(base: u16, extra: &[&str]) -> std::process::Child {
    Command::new(bin_path("ringdaq"))
        .args(["sim", "--json", "--port-base", &base.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn report(child: std::process::Child) -> SimReport {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn is_mode_every_field_and_every_pixel() {
    let (base, socks) = bind_consecutive_udp(8).unwrap();
    let frames = 4;
    let child = sim(base, &["--frames", "4", "--fps", "50", "--first-frame-id", "1000", "--sync-at", "2"]);
    let got = receive_all(&socks, frames * 256);
    let r = report(child);
    assert_eq!((r.frames, r.datagrams), (4, 1024));
    assert_eq!(got.len(), 1024, "datagrams lost on loopback");
    let mut seen: HashMap<(u32, usize, u16, u16), ()> = HashMap::new();
    for (sector, d) in &got {
        assert_eq!(d.len(), 22360);
        let h = plain(d);
        assert_eq!(h.sync, 0xFFFF_0055);
        assert_eq!(h.version, 1);
        assert_eq!((h.width, h.height, h.block_size), (256, 1860, 0x5758));
        assert!((1000..1004).contains(&h.frame_id));
        let index = u64::from(h.frame_id - 1000);
        assert_eq!(h.flags & 1 == 1, index >= 2, "sync flag from frame index 2 on");
        assert_eq!(h.x.1, h.x.0 + 15);
        assert_eq!(h.y.1, h.y.0 + 929);
        assert!(h.x.0.is_multiple_of(16) && h.x.0 < 256 && (h.y.0 == 0 || h.y.0 == 930));
        // block_count: frames before this one × 32 + position in the camera order
        let order = (15 - usize::from(h.x.0) / 16) + 16 * (usize::from(h.y.0) / 930);
        assert_eq!(h.block_count as u64, index * 32 + order as u64);
        assert!(seen.insert((h.frame_id, *sector, h.x.0, h.y.0), ()).is_none(), "duplicate block");
        let payload = &d[40..];
        for r in 0..930 {
            for c in 0..16 {
                let want = pixel(&*k2::IS, h.frame_id, usize::from(h.y.0) + r, sector * 256 + usize::from(h.x.0) + c);
                assert_eq!(
                    packed12(payload, r * 16 + c),
                    want,
                    "frame {} sector {sector} block ({},{}) px ({r},{c})",
                    h.frame_id,
                    h.x.0,
                    h.y.0
                );
            }
        }
    }
    // Camera order, per sector: x_start 240, 224, ..., 0 for y_start 0, then the same for y_start 930.
    for sector in 0..8 {
        let order: Vec<(u16, u16)> =
            got.iter().filter(|(s, _)| *s == sector).take(32).map(|(_, d)| (plain(d).x.0, plain(d).y.0)).collect();
        let want: Vec<(u16, u16)> =
            [0u16, 930].iter().flat_map(|&y| (0..16u16).rev().map(move |x| (x * 16, y))).collect();
        assert_eq!(order, want, "sector {sector}");
    }
}

#[test]
fn summit_mode_pixels_are_big_endian_u16() {
    let (base, socks) = bind_consecutive_udp(8).unwrap();
    let child = sim(base, &["--frames", "1", "--mode", "summit", "--fps", "20"]);
    let got = receive_all(&socks, 640);
    report(child);
    assert_eq!(got.len(), 640);
    for (sector, d) in &got {
        let h = plain(d);
        assert_eq!((h.width, h.height, h.block_size, d.len()), (512, 3840, 0xC028, 0xC028));
        assert_eq!((h.x.1 - h.x.0, h.y.1 - h.y.0), (31, 767));
        for r in (0..768).step_by(37) {
            for c in 0..32 {
                let k = 40 + (r * 32 + c) * 2;
                let v = u16::from(d[k]) << 8 | u16::from(d[k + 1]);
                assert_eq!(
                    v,
                    pixel(&*k2::SUMMIT, h.frame_id, usize::from(h.y.0) + r, sector * 512 + usize::from(h.x.0) + c)
                );
            }
        }
    }
}

#[test]
fn faults_match_the_report() {
    let (base, socks) = bind_consecutive_udp(8).unwrap();
    let child = sim(
        base,
        &[
            "--frames",
            "20",
            "--fps",
            "200",
            "--drop",
            "0.05",
            "--duplicate",
            "0.05",
            "--corrupt",
            "0.03",
            "--reorder",
            "16",
            "--reset-at",
            "10",
            "--first-frame-id",
            "7",
            "--seed",
            "42",
        ],
    );
    let got = receive_all(&socks, 20 * 256);
    let r = report(child);
    assert_eq!(got.len() as u64, r.datagrams, "every datagram sent arrives on loopback");
    assert!(r.dropped > 0 && r.duplicated > 0 && r.corrupted > 0);
    assert_eq!(r.datagrams, 20 * 256 - r.dropped + r.duplicated);
    let g = k2::IS_GEOMETRY;
    let invalid = got.iter().filter(|(_, d)| detector::k2::header::BlockHeader::parse(d, &g).is_err()).count() as u64;
    assert_eq!(invalid, r.corrupted, "each corrupted datagram is invalid, every other one valid");
    // frame ids 7..17, then reset to 7..17 again
    let mut ids: Vec<u32> = got
        .iter()
        .filter_map(|(_, d)| detector::k2::header::BlockHeader::parse(d, &g).ok())
        .map(|h| h.frame_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, (7..17).collect::<Vec<_>>());
    let lost: u64 = r.lossy_frames.values().map(|(_, n)| u64::from(*n)).sum();
    assert_eq!(lost, r.dropped + r.corrupted);
}

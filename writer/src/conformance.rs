//! The checks every output format passes (as iceoryx2 runs one suite over every implementation of a concept).
//!
//! Each check takes a format and an empty directory of its own and returns the first thing that is wrong. The
//! writer's tests run them over every format in [`crate::format::registry`], so a new format is checked by
//! being registered. [`kill_at_every_step`] makes its own directory and needs a child process: it re-runs the
//! current test binary, which must call it from the test named by `test_name` (it plays the child there when
//! told so by [`CHILD_ENV`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::{Compression, FormatError, FormatFile, FrameShape, OutputFormat, Plan};
use crate::output::{Output, temp_files};
use crate::sidecar::{FrameMeta, Sidecar, sidecar_path};

/// Frames of the checks: 8 KiB each (two pages, so that `O_DIRECT` may be used), small enough to be quick.
pub const SHAPE: FrameShape = FrameShape { rows: 4, cols: 1024 };
/// Frames planned in the checks.
pub const FRAMES: u64 = 5;
/// Set in the child process of [`kill_at_every_step`]: `format`, `step`, `frames to finish with`, `path`.
pub const CHILD_ENV: &str = "RINGDAQ_WRITER_CONFORMANCE_CHILD";

/// A check that failed.
#[derive(Debug, thiserror::Error)]
#[error("{format}: {check}: {detail}")]
pub struct Failure {
    /// The format checked (and its compression, if any: `hdf5+bslz4`).
    pub format: String,
    /// The check.
    pub check: &'static str,
    /// What went wrong.
    pub detail: String,
}

/// A fresh directory under the system's temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `ringdaq-writer-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ringdaq-writer-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs every check but [`kill_at_every_step`] on `format` with each of its compressions, each in its own
/// directory under `dir` (the check `grow` only on a format that [`OutputFormat::grows`]).
pub fn check_all(format: &'static dyn OutputFormat, dir: &Path) -> Result<(), Failure> {
    Subject::each(format).try_for_each(|s| check_subject(s, &dir.join(s.label())))
}

fn check_subject(format: Subject, dir: &Path) -> Result<(), Failure> {
    type Check = fn(Subject, &Path) -> Result<(), Failure>;
    let checks: [(&str, Check); 7] = [
        ("write-read", write_and_read_back),
        ("short", short_finish),
        ("rewrite", idempotent_rewrite),
        ("resume", resume),
        ("temp-names", temp_names),
        ("output", output_with_sidecar),
        ("grow", grow),
    ];
    for (name, check) in checks {
        if name == "grow" && !format.grows() {
            continue;
        }
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).map_err(|e| fail(format, "setup", e))?;
        check(format, &sub)?;
    }
    Ok(())
}

/// The pixels of frame `index` of the checks: different in every frame and pixel.
pub fn frame(index: u64) -> Vec<u16> {
    (0..SHAPE.rows * SHAPE.cols).map(|p| (p.wrapping_mul(31) ^ index.wrapping_mul(40_503)) as u16).collect()
}

/// Frame `index` as bytes in a page-aligned slice, as the frame ring hands them over (`buf` holds them).
fn frame_bytes(index: u64, buf: &mut Vec<u8>) -> &[u8] {
    let n = SHAPE.frame_bytes() as usize;
    buf.clear();
    buf.resize(n + 4096, 0);
    let off = buf.as_ptr().align_offset(4096).min(4096);
    for (dst, px) in buf[off..off + n].chunks_exact_mut(2).zip(frame(index)) {
        dst.copy_from_slice(&px.to_le_bytes());
    }
    &buf[off..off + n]
}

fn fail(format: Subject, check: &'static str, detail: impl std::fmt::Display) -> Failure {
    Failure { format: format.label(), check, detail: detail.to_string() }
}

/// A format with one of its compressions: what the checks check.
#[derive(Clone, Copy)]
pub struct Subject {
    format: &'static dyn OutputFormat,
    compression: Compression,
}

impl Subject {
    /// `format` storing frames with `compression`.
    pub fn new(format: &'static dyn OutputFormat, compression: Compression) -> Self {
        Self { format, compression }
    }

    /// `format` with each of its compressions.
    pub fn each(format: &'static dyn OutputFormat) -> impl Iterator<Item = Self> {
        format.compressions().iter().map(move |&c| Self::new(format, c))
    }

    /// `npy`, `hdf5+bslz4`: the format's name and its compression but none.
    pub fn label(&self) -> String {
        match self.compression {
            Compression::None => self.format.name().to_owned(),
            c => format!("{}+{}", self.format.name(), c.as_str()),
        }
    }

    fn plan(&self, frames: u64) -> Plan {
        Plan { shape: SHAPE, frames, direct_io: true, compression: self.compression }
    }
}

impl std::ops::Deref for Subject {
    type Target = dyn OutputFormat;

    fn deref(&self) -> &Self::Target {
        self.format
    }
}

/// The output path of the checks in `dir`, with the format's first extension.
fn out_path(format: Subject, dir: &Path) -> PathBuf {
    dir.join(format!("out.{}", format.extensions().first().copied().unwrap_or("out")))
}

fn write(file: &mut dyn FormatFile, indices: impl IntoIterator<Item = u64>) -> Result<(), FormatError> {
    let mut buf = Vec::new();
    indices.into_iter().try_for_each(|i| file.write_frame(i, frame_bytes(i, &mut buf)))
}

/// Checks that `path` reads back as frames `0..frames` of the checks.
fn check_read(format: Subject, check: &'static str, path: &Path, frames: u64) -> Result<(), Failure> {
    let back = format.read(path).map_err(|e| fail(format, check, e))?;
    if back.shape != [frames, SHAPE.rows, SHAPE.cols] {
        return Err(fail(
            format,
            check,
            format!("shape {:?}, expected [{frames}, {}, {}]", back.shape, SHAPE.rows, SHAPE.cols),
        ));
    }
    let expected: Vec<u16> = (0..frames).flat_map(frame).collect();
    if back.pixels != expected {
        let at = back.pixels.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(back.pixels.len());
        return Err(fail(format, check, format!("pixels differ from pixel {at} on")));
    }
    Ok(())
}

/// Writes frames `order` of a plan of `planned` into a new file in `dir`, finishes it with `finish` frames.
fn write_file(
    format: Subject,
    check: &'static str,
    dir: &Path,
    planned: u64,
    order: &[u64],
    finish: u64,
) -> Result<PathBuf, Failure> {
    std::fs::create_dir_all(dir).map_err(|e| fail(format, check, e))?;
    let path = out_path(format, dir);
    let mut f = format.create(&path, &format.plan(planned)).map_err(|e| fail(format, check, e))?;
    write(f.as_mut(), order.iter().copied()).map_err(|e| fail(format, check, e))?;
    f.finish(finish).and_then(|()| f.publish()).map_err(|e| fail(format, check, e))?;
    Ok(path)
}

fn read(format: Subject, check: &'static str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| fail(format, check, format!("{}: {e}", path.display())))
}

/// The file of a run without incident: every planned frame, in order, finished with `finish` frames.
fn reference(format: Subject, check: &'static str, dir: &Path, finish: u64) -> Result<Vec<u8>, Failure> {
    let path = write_file(format, check, &dir.join("reference"), FRAMES, &(0..FRAMES).collect::<Vec<_>>(), finish)?;
    read(format, check, &path)
}

fn same(format: Subject, check: &'static str, got: &[u8], want: &[u8]) -> Result<(), Failure> {
    if got == want {
        return Ok(());
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    Err(fail(
        format,
        check,
        format!(
            "{} bytes, not those of a run without incident ({} bytes); first difference at byte {at}",
            got.len(),
            want.len()
        ),
    ))
}

/// Frames written out of order all land at their place; the file reads back whole. Its size is what
/// [`OutputFormat::file_bytes`] says (what `acquire` checks the file system has room for), at least the pixels.
pub fn write_and_read_back(format: Subject, dir: &Path) -> Result<(), Failure> {
    let path = write_file(format, "write and read back", dir, FRAMES, &[3, 0, 4, 1, 2], FRAMES)?;
    check_read(format, "write and read back", &path, FRAMES)?;
    let len = std::fs::metadata(&path).map_err(|e| fail(format, "write and read back", e))?.len();
    let said = format.file_bytes(&format.plan(FRAMES));
    if len > said || said < format.plan(FRAMES).pixel_bytes() {
        return Err(fail(format, "file size", format!("{len} bytes on disk, file_bytes says {said}")));
    }
    Ok(())
}

/// Finishing with fewer frames than planned (none, some) gives a valid file of just those frames.
pub fn short_finish(format: Subject, dir: &Path) -> Result<(), Failure> {
    for n in [0, 2, FRAMES - 1] {
        let path =
            write_file(format, "short finish", &dir.join(n.to_string()), FRAMES, &(0..n).collect::<Vec<_>>(), n)?;
        check_read(format, "short finish", &path, n)?;
    }
    Ok(())
}

/// Writing frames again (each one twice, some three times) leaves the same bytes as writing them once.
pub fn idempotent_rewrite(format: Subject, dir: &Path) -> Result<(), Failure> {
    let want = reference(format, "idempotent rewrite", dir, FRAMES)?;
    let order = [0, 1, 1, 2, 0, 3, 4, 2, 3, 4, 4];
    let path = write_file(format, "idempotent rewrite", &dir.join("again"), FRAMES, &order, FRAMES)?;
    same(format, "idempotent rewrite", &read(format, "idempotent rewrite", &path)?, &want)
}

/// A file abandoned without a finish (the writer died) is reopened and written on; so is one whose finish with
/// fewer frames was done but not its publication. The result is the file of a run without incident.
pub fn resume(format: Subject, dir: &Path) -> Result<(), Failure> {
    const CHECK: &str = "resume";
    for finish in [FRAMES, 2] {
        let want = reference(format, CHECK, dir, finish)?;
        let sub = dir.join(format!("resumed-{finish}"));
        std::fs::create_dir_all(&sub).map_err(|e| fail(format, CHECK, e))?;
        let path = out_path(format, &sub);
        let mut f = format.create(&path, &format.plan(FRAMES)).map_err(|e| fail(format, CHECK, e))?;
        write(f.as_mut(), 0..3).map_err(|e| fail(format, CHECK, e))?;
        drop(f);
        let mut f = format.resume(&path, &format.plan(FRAMES)).map_err(|e| fail(format, CHECK, e))?;
        write(f.as_mut(), 2..FRAMES).map_err(|e| fail(format, CHECK, e))?;
        f.finish(finish).map_err(|e| fail(format, CHECK, e))?;
        drop(f);
        // Died between finishing and publishing: a restarted writer reopens and finishes again.
        let mut f = format.resume(&path, &format.plan(FRAMES)).map_err(|e| fail(format, CHECK, e))?;
        f.finish(finish).and_then(|()| f.publish()).map_err(|e| fail(format, CHECK, e))?;
        same(format, CHECK, &read(format, CHECK, &path)?, &want)?;
    }
    Ok(())
}

/// A file grown in steps (a continuous acquisition) holds every frame written before and after each step, reads
/// as what it holds when finished short of its room, and is the same after a kill and resume between steps.
pub fn grow(format: Subject, dir: &Path) -> Result<(), Failure> {
    const CHECK: &str = "grow";
    let path = write_file(format, CHECK, &dir.join("reference"), FRAMES, &(0..FRAMES).collect::<Vec<_>>(), FRAMES)?;
    let want = read(format, CHECK, &path)?;
    let sub = dir.join("grown");
    std::fs::create_dir_all(&sub).map_err(|e| fail(format, CHECK, e))?;
    let path = out_path(format, &sub);
    let mut f = format.create(&path, &format.plan(2)).map_err(|e| fail(format, CHECK, e))?;
    write(f.as_mut(), 0..2).map_err(|e| fail(format, CHECK, e))?;
    f.grow(4).map_err(|e| fail(format, CHECK, e))?;
    write(f.as_mut(), 2..4).map_err(|e| fail(format, CHECK, e))?;
    drop(f);
    // Killed after the step: reopened for the room it had, then grown past it.
    let mut f = format.resume(&path, &format.plan(4)).map_err(|e| fail(format, CHECK, e))?;
    f.grow(FRAMES + 3).map_err(|e| fail(format, CHECK, e))?;
    write(f.as_mut(), 3..FRAMES).map_err(|e| fail(format, CHECK, e))?;
    f.finish(FRAMES).and_then(|()| f.publish()).map_err(|e| fail(format, CHECK, e))?;
    same(format, CHECK, &read(format, CHECK, &path)?, &want)?;
    check_read(format, CHECK, &path, FRAMES)
}

/// The files in `dir` (names).
fn listing(dir: &Path) -> std::io::Result<BTreeSet<PathBuf>> {
    std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect()
}

/// The format's temporary files are exactly the files that exist while the acquisition is written, and none of
/// them is left after it is published.
pub fn temp_names(format: Subject, dir: &Path) -> Result<(), Failure> {
    const CHECK: &str = "temporary names";
    let path = out_path(format, dir);
    let temps: BTreeSet<PathBuf> = format.temp_files(&path).into_iter().collect();
    if temps.is_empty() || temps.contains(&path) {
        return Err(fail(format, CHECK, format!("{temps:?} for {}", path.display())));
    }
    let mut f = format.create(&path, &format.plan(FRAMES)).map_err(|e| fail(format, CHECK, e))?;
    let during = listing(dir).map_err(|e| fail(format, CHECK, e))?;
    if during != temps {
        return Err(fail(format, CHECK, format!("listed {temps:?}, but {during:?} exist after create")));
    }
    if f.temp_path() != format.temp_files(&path)[0] {
        return Err(fail(
            format,
            CHECK,
            format!("temp_path {} is not the first temporary file", f.temp_path().display()),
        ));
    }
    write(f.as_mut(), 0..FRAMES).map_err(|e| fail(format, CHECK, e))?;
    f.finish(FRAMES).map_err(|e| fail(format, CHECK, e))?;
    let finished = listing(dir).map_err(|e| fail(format, CHECK, e))?;
    if finished != temps {
        return Err(fail(format, CHECK, format!("listed {temps:?}, but {finished:?} exist after finish")));
    }
    f.publish().map_err(|e| fail(format, CHECK, e))?;
    let after = listing(dir).map_err(|e| fail(format, CHECK, e))?;
    if after != BTreeSet::from([path.clone()]) {
        return Err(fail(format, CHECK, format!("{after:?} exist after publishing, not just {}", path.display())));
    }
    Ok(())
}

/// Through [`Output`] (journal and sidecar included): [`temp_files`] lists every file that exists during the
/// acquisition, none is left after it, and the sidecar describes the frames written.
pub fn output_with_sidecar(format: Subject, dir: &Path) -> Result<(), Failure> {
    const CHECK: &str = "output";
    let path = out_path(format, dir);
    let listed: BTreeSet<PathBuf> = temp_files(&path).map_err(|e| fail(format, CHECK, e))?.into_iter().collect();
    let mut out = Output::open(&path, &format.plan(FRAMES), false).map_err(|e| fail(format, CHECK, e))?;
    let during = listing(dir).map_err(|e| fail(format, CHECK, e))?;
    if !during.is_subset(&listed) || !Output::can_resume(&path) {
        return Err(fail(format, CHECK, format!("{during:?} exist, not all listed in {listed:?}")));
    }
    let mut buf = Vec::new();
    let meta = |index| FrameMeta {
        index,
        frame_id: 100 + index as u32,
        complete: index != 1,
        missing_blocks: u32::from(index == 1),
        first_block_ns: index,
        last_block_ns: index + 1,
        published_ns: index + 2,
    };
    for i in 0..3 {
        out.write(&meta(i), frame_bytes(i, &mut buf)).map_err(|e| fail(format, CHECK, e))?;
    }
    let mut list = Vec::new();
    out.finish(3, 0, |frames| {
        list.clone_from(&frames);
        Sidecar {
            version: 1,
            acquisition_id: 1,
            path: path.display().to_string(),
            frames_requested: FRAMES,
            continuous: false,
            ended: Some(shm_protocol::pipeline::EndReason::Stopped),
            reason: Some("stopped by the user".into()),
            frames: 3,
            complete_frames: 2,
            incomplete_frames: 1,
            shape: [3, SHAPE.rows, SHAPE.cols],
            dtype: "uint16".into(),
            fill_value: 0,
            placement: None,
            counters: Default::default(),
            frame_list: frames,
        }
    })
    .map_err(|e| fail(format, CHECK, e))?;
    if list != (0..3).map(meta).collect::<Vec<_>>() {
        return Err(fail(format, CHECK, format!("the journal gave {list:?}")));
    }
    let after = listing(dir).map_err(|e| fail(format, CHECK, e))?;
    if after != BTreeSet::from([path.clone(), sidecar_path(&path)]) {
        return Err(fail(format, CHECK, format!("{after:?} exist after finishing")));
    }
    check_read(format, CHECK, &path, 3)?;
    let text = std::fs::read_to_string(sidecar_path(&path)).map_err(|e| fail(format, CHECK, e))?;
    let side: Sidecar = serde_json::from_str(&text).map_err(|e| fail(format, CHECK, e))?;
    if side.frame_list != list || side.frames != 3 {
        return Err(fail(format, CHECK, format!("sidecar {side:?}")));
    }
    Ok(())
}

/// The steps of an acquisition, in order: 0 creates, `1..=FRAMES` write frame `step - 1`, `FRAMES + 1`
/// finishes with `finish` frames, `FRAMES + 2` publishes. Runs `steps` of them on `f` (opened for step 0).
fn run_steps(
    format: Subject,
    path: &Path,
    steps: std::ops::RangeInclusive<u64>,
    finish: u64,
    mut f: Option<Box<dyn FormatFile>>,
    mut after_step: impl FnMut(u64),
) -> Result<(), FormatError> {
    let mut buf = Vec::new();
    for step in steps {
        if step == 0 {
            f = Some(format.create(path, &format.plan(FRAMES))?);
        } else if let Some(f) = f.as_mut() {
            match step {
                s if s <= FRAMES => f.write_frame(s - 1, frame_bytes(s - 1, &mut buf))?,
                s if s == FRAMES + 1 => f.finish(finish)?,
                _ => f.publish()?,
            }
        }
        after_step(step);
    }
    Ok(())
}

/// In the child of [`kill_at_every_step`] (told by [`CHILD_ENV`]), for `format`: runs the steps up to the
/// given one and SIGKILLs itself. Returns at once otherwise.
pub fn child_main(format: Subject) {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(4, '\t');
    let (Some(name), Some(Ok(last)), Some(Ok(finish)), Some(path)) =
        (parts.next(), parts.next().map(str::parse), parts.next().map(str::parse), parts.next())
    else {
        return;
    };
    if name != format.label() {
        return;
    }
    let kill = |step| {
        if step == last {
            // Between two steps, as a writer killed by the supervisor or the OOM killer would be.
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        }
    };
    if let Err(e) = run_steps(format, Path::new(path), 0..=last, finish, None, kill) {
        // The parent sees an exit that is not SIGKILL and reports this.
        tracing::error!(error = %e, "conformance child failed");
        std::process::exit(3);
    }
    std::process::exit(4);
}

/// A real child process performs the steps of an acquisition up to step `k` and is SIGKILLed; the file is
/// then resumed and finished, and must be byte-identical to the file of a run without the kill, for every `k`
/// (and for a finish with all frames and with fewer), in a temporary directory of its own. The child is this
/// test binary run again on the test `test_name`, which must call this function before it creates anything (it
/// plays the child there). In the child, returns only if it is the child for another format.
pub fn kill_at_every_step(format: &'static dyn OutputFormat, test_name: &str) -> Result<(), Failure> {
    Subject::each(format).try_for_each(|s| kill_subject_at_every_step(s, test_name))
}

fn kill_subject_at_every_step(format: Subject, test_name: &str) -> Result<(), Failure> {
    const CHECK: &str = "SIGKILL between two steps";
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main(format);
        return Ok(());
    }
    // Made here, after the child has gone its way: a child is killed and would leave its own behind.
    let tmp = TempDir::new(&format!("killed-{}", format.label())).map_err(|e| fail(format, CHECK, e))?;
    let dir = tmp.path();
    let exe = std::env::current_exe().map_err(|e| fail(format, CHECK, e))?;
    for finish in [FRAMES, FRAMES - 2] {
        let want = reference(format, CHECK, dir, finish)?;
        for k in 0..=FRAMES + 2 {
            let sub = dir.join(format!("killed-{finish}-{k}"));
            std::fs::create_dir_all(&sub).map_err(|e| fail(format, CHECK, e))?;
            let path = out_path(format, &sub);
            let status = Command::new(&exe)
                .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{}\t{k}\t{finish}\t{}", format.label(), path.display()))
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| fail(format, CHECK, format!("running {}: {e}", exe.display())))?;
            if std::os::unix::process::ExitStatusExt::signal(&status) != Some(libc::SIGKILL) {
                return Err(fail(format, CHECK, format!("the child for step {k} ended with {status}, not SIGKILL")));
            }
            // What a restarted writer does: reopen the temporary files if they are all there, and repeat the
            // last step the child did (as a writer repeats the frames after its committed cursor).
            let published = k == FRAMES + 2;
            let temps = format.temp_files(&path);
            if published != path.exists() || temps.iter().any(|t| t.exists() == published) {
                return Err(fail(format, CHECK, format!("after step {k}: temporary files {temps:?}")));
            }
            if !published {
                let f = format.resume(&path, &format.plan(FRAMES)).map_err(|e| fail(format, CHECK, e))?;
                run_steps(format, &path, k.max(1)..=FRAMES + 2, finish, Some(f), |_| {})
                    .map_err(|e| fail(format, CHECK, format!("resuming after step {k}: {e}")))?;
            }
            let got = read(format, CHECK, &path)?;
            same(format, CHECK, &got, &want)
                .map_err(|e| fail(format, CHECK, format!("killed after step {k}: {}", e.detail)))?;
            if let Some(t) = temps.iter().find(|t| t.exists()) {
                return Err(fail(format, CHECK, format!("{} is left after step {k}", t.display())));
            }
        }
    }
    Ok(())
}

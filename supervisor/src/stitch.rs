//! `ringdaq stitch`: several pipelines' parts of one detector's frames (`ringdaq run --sectors`, each writing its
//! own `.h5`) presented as whole frames, by an HDF5 virtual dataset (as odin-data, std-daq and the sls receiver
//! join their writers' files). Nothing is copied: the stitched file maps each part's rectangles
//! ([`writer::placement`]) into `/entry/data/data` of shape (frames, rows, cols) of the whole detector.
//!
//! The parts must tile the whole frame without overlap (a gap, such as a sector no pipeline took, is refused, or
//! with `allow_missing` reads as the fill value), hold the same frames (same count and frame ids; with
//! `common_frames`, the frames all parts hold) and agree on the whole frame's shape. The per-frame datasets are
//! the parts' combined: `frame_id` (virtual, from the first part, checked equal in all), `complete` (all parts
//! complete), `missing_blocks` (summed), `first_block_ns` (earliest), `last_block_ns` and `published_ns`
//! (latest). Source files are named relative to the stitched file, so the set can be moved together.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail, ensure};
use hdf5::types::VarLenUnicode;
use hdf5::{Group, Location};
use writer::placement::{self, PartPlacement};

/// The frames dataset of every ringdaq HDF5 file.
pub const DATA: &str = "/entry/data/data";

/// What `ringdaq stitch` is asked.
#[derive(Debug, Clone, clap::Args)]
pub struct StitchArgs {
    /// The stitched file to write (refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// The parts: `.h5` files written by pipelines that each took some of the detector's sectors.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// Parts with different frame counts: stitch the frames all of them hold (else refused).
    #[arg(long)]
    pub common_frames: bool,
    /// Parts that do not cover the whole frame: the pixels no part holds read as the fill value (else refused).
    #[arg(long)]
    pub allow_missing: bool,
}

/// One part, as read from its file.
#[derive(Debug, Clone)]
pub struct Part {
    /// The file.
    pub path: PathBuf,
    /// Frames, rows, cols of its `/entry/data/data`.
    pub shape: [usize; 3],
    /// Where its frames lie in the whole frame.
    pub placement: PartPlacement,
    /// Value of the pixels of missing blocks.
    pub fill_value: u16,
    /// Per-frame `frame_id`, if the file has it.
    pub frame_ids: Option<Vec<u32>>,
}

/// What was stitched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stitched {
    /// Frames of the stitched dataset.
    pub frames: usize,
    /// Rows and columns of the whole frame.
    pub full_shape: [usize; 2],
    /// Sectors no part holds (their pixels read as the fill value).
    pub missing_sectors: Vec<u32>,
    /// What the user should know (frames dropped, pixels missing).
    pub warnings: Vec<String>,
}

fn part_name(p: &Path) -> String {
    p.display().to_string()
}

/// Reads the part at `path`: its frames' shape, placement, fill value and frame ids.
pub fn read_part(path: &Path) -> anyhow::Result<Part> {
    let f = hdf5::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ds = f.dataset(DATA).with_context(|| format!("{}: no {DATA}", path.display()))?;
    let s = ds.shape();
    ensure!(s.len() == 3, "{}: {DATA} has shape {s:?}, not (frames, rows, cols)", path.display());
    ensure!(ds.dtype()?.is::<u16>(), "{}: {DATA} is not uint16", path.display());
    let det = f
        .group(placement::DETECTOR_GROUP)
        .with_context(|| format!("{}: no {}", path.display(), placement::DETECTOR_GROUP))?;
    let placement = placement::read_hdf5(&det)?.with_context(|| {
        format!(
            "{}: no placement in {} (written by a ringdaq without scale-out, or not by ringdaq)",
            path.display(),
            placement::DETECTOR_GROUP
        )
    })?;
    let fill_value = match det.attr("fill_value") {
        Ok(a) => u16::try_from(a.read_scalar::<u64>()?).unwrap_or(0),
        Err(_) => 0,
    };
    let frame_ids = match f.dataset("/entry/data/frame_id") {
        Ok(d) => Some(d.read_raw::<u32>()?),
        Err(_) => None,
    };
    Ok(Part { path: path.to_owned(), shape: [s[0], s[1], s[2]], placement, fill_value, frame_ids })
}

/// Checks that `parts` can be stitched: one whole-frame shape, rectangles inside their frames, no pixel in two
/// parts, the whole frame covered (unless `allow_missing`), the same frames (unless `common_frames`: the frames
/// they all hold). Returns what the stitched dataset is.
pub fn check(parts: &[Part], common_frames: bool, allow_missing: bool) -> anyhow::Result<Stitched> {
    let Some(first) = parts.first() else { bail!("no parts to stitch") };
    let full = first.placement.full_shape;
    let mut warnings = Vec::new();
    for p in parts {
        ensure!(
            p.placement.full_shape == full,
            "{} is part of a {:?} frame, {} of a {:?} one: not the same detector",
            part_name(&p.path),
            p.placement.full_shape,
            part_name(&first.path),
            full
        );
        ensure!(!p.placement.rects.is_empty(), "{}: its placement has no rectangles", part_name(&p.path));
        for r in &p.placement.rects {
            let [row, col, frow, fcol, rows, cols] = *r;
            ensure!(
                row + rows <= p.shape[1] as u64
                    && col + cols <= p.shape[2] as u64
                    && frow + rows <= full[0]
                    && fcol + cols <= full[1],
                "{}: rectangle {r:?} lies outside its {}×{} frames or the {}×{} whole",
                part_name(&p.path),
                p.shape[1],
                p.shape[2],
                full[0],
                full[1]
            );
        }
    }
    // Which part holds each pixel of the whole frame (0: none).
    let (rows, cols) = (full[0] as usize, full[1] as usize);
    let mut owner = vec![0u16; rows * cols];
    for (i, p) in parts.iter().enumerate() {
        for r in &p.placement.rects {
            let [_, _, frow, fcol, n_rows, n_cols] = r.map(|v| v as usize);
            for y in frow..frow + n_rows {
                for (x, o) in owner[y * cols + fcol..y * cols + fcol + n_cols].iter_mut().enumerate() {
                    if *o != 0 {
                        bail!(
                            "{} and {} overlap: both hold pixel ({y}, {}) of the whole frame",
                            part_name(&parts[usize::from(*o) - 1].path),
                            part_name(&p.path),
                            fcol + x
                        );
                    }
                    *o = (i + 1) as u16;
                }
            }
        }
    }
    let uncovered = owner.iter().filter(|&&o| o == 0).count();
    let mut missing_sectors = Vec::new();
    if uncovered > 0 {
        let n = first.placement.detector_streams;
        let held: Vec<u32> = parts.iter().flat_map(|p| p.placement.streams.iter().copied()).collect();
        missing_sectors = (0..n as u32).filter(|s| !held.contains(s)).collect();
        let what = match missing_sectors.is_empty() {
            true => format!("{uncovered} pixels of the {rows}×{cols} frame are in no part"),
            false => format!(
                "sectors {} are in no part ({uncovered} pixels of the {rows}×{cols} frame)",
                missing_sectors.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ),
        };
        ensure!(allow_missing, "{what}; stitch them with --allow-missing to read them as the fill value");
        warnings.push(format!("{what}: they read as the fill value {}", first.fill_value));
    }
    let counts: Vec<usize> = parts.iter().map(|p| p.shape[0]).collect();
    let frames = counts.iter().copied().min().unwrap_or(0);
    if counts.iter().any(|&c| c != frames) {
        let list = parts.iter().map(|p| format!("{} has {}", part_name(&p.path), p.shape[0])).collect::<Vec<_>>();
        ensure!(
            common_frames,
            "the parts hold different numbers of frames ({}); stitch the {frames} they all hold with --common-frames",
            list.join(", ")
        );
        warnings.push(format!("only the first {frames} frames are stitched: {}", list.join(", ")));
    }
    if let Some(ids) = &first.frame_ids {
        for p in &parts[1..] {
            let Some(other) = &p.frame_ids else { continue };
            if let Some(i) = (0..frames).find(|&i| ids.get(i) != other.get(i)) {
                bail!(
                    "frame {i} is frame id {:?} in {} but {:?} in {}: the parts hold different frames (arm every \
                     pipeline's acquisition to start at the detector's sync flag)",
                    ids.get(i),
                    part_name(&first.path),
                    other.get(i),
                    part_name(&p.path)
                );
            }
        }
    }
    Ok(Stitched { frames, full_shape: [rows, cols], missing_sectors, warnings })
}

/// `target` named relative to directory `from` (both made absolute): `../parts/a.h5`.
pub fn relative_path(target: &Path, from: &Path) -> anyhow::Result<PathBuf> {
    let abs = |p: &Path| -> anyhow::Result<PathBuf> {
        let p = if p.is_absolute() { p.to_owned() } else { std::env::current_dir()?.join(p) };
        // Symbolic links resolved where the path exists, so that both sides are compared alike.
        Ok(p.canonicalize().unwrap_or(p))
    };
    let (t, f) = (abs(target)?, abs(from)?);
    let tc: Vec<Component<'_>> = t.components().collect();
    let fc: Vec<Component<'_>> = f.components().collect();
    let common = tc.iter().zip(&fc).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..fc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c.as_os_str());
    }
    Ok(out)
}

fn text_attr(loc: &Location, name: &str, value: &str) -> anyhow::Result<()> {
    let v: VarLenUnicode = value.parse().map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
    loc.new_attr::<VarLenUnicode>().shape(()).create(name)?.write_scalar(&v)?;
    Ok(())
}

fn group(parent: &Group, name: &str, class: &str) -> anyhow::Result<Group> {
    let g = parent.create_group(name)?;
    text_attr(&g, "NX_class", class)?;
    Ok(g)
}

/// How a per-frame dataset of the parts becomes the stitched one.
#[derive(Clone, Copy)]
enum Combine {
    /// The first part's, as a virtual dataset (checked equal in all parts).
    First,
    All,
    Sum,
    Min,
    Max,
}

/// The per-frame datasets and how each is combined.
const PER_FRAME: &[(&str, Combine)] = &[
    ("frame_id", Combine::First),
    ("complete", Combine::All),
    ("missing_blocks", Combine::Sum),
    ("first_block_ns", Combine::Min),
    ("last_block_ns", Combine::Max),
    ("published_ns", Combine::Max),
];

/// Writes the stitched file `out` over `parts` (checked by [`check`] as `s`).
fn write(out: &Path, parts: &[Part], s: &Stitched) -> anyhow::Result<()> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let f = hdf5::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    text_attr(&f, "default", "entry")?;
    let entry = group(&f, "entry", "NXentry")?;
    text_attr(&entry, "default", "data")?;
    text_attr(&entry, "ringdaq_version", env!("CARGO_PKG_VERSION"))?;
    let data = group(&entry, "data", "NXdata")?;
    text_attr(&data, "signal", "data")?;
    let [rows, cols] = s.full_shape;
    let n = s.frames;
    let fill = parts[0].fill_value;
    let mut b = data.new_dataset::<u16>().shape([n, rows, cols]).fill_value(fill);
    for p in parts {
        let src = relative_path(&p.path, dir)?.display().to_string();
        for r in &p.placement.rects {
            let [row, col, frow, fcol, n_rows, n_cols] = r.map(|v| v as usize);
            b = b.virtual_map(
                &src,
                DATA,
                p.shape,
                (0..n, row..row + n_rows, col..col + n_cols),
                [n, rows, cols],
                (0..n, frow..frow + n_rows, fcol..fcol + n_cols),
            );
        }
    }
    b.create("data").with_context(|| format!("{}: the virtual dataset", out.display()))?;
    per_frame(&data, parts, n, dir)?;
    let instrument = group(&entry, "instrument", "NXinstrument")?;
    let det = group(&instrument, "detector", "NXdetector")?;
    det.new_attr::<u64>().shape(()).create("fill_value")?.write_scalar(&u64::from(fill))?;
    let whole = PartPlacement {
        full_shape: [rows as u64, cols as u64],
        detector_streams: parts[0].placement.detector_streams,
        streams: {
            let mut v: Vec<u32> = parts.iter().flat_map(|p| p.placement.streams.iter().copied()).collect();
            v.sort_unstable();
            v
        },
        rects: vec![[0, 0, 0, 0, rows as u64, cols as u64]],
    };
    placement::write_hdf5(&det, &whole)?;
    let sources: Vec<String> =
        parts.iter().map(|p| relative_path(&p.path, dir).map(|r| r.display().to_string())).collect::<Result<_, _>>()?;
    text_attr(&entry, "stitched_from", &sources.join("\n"))?;
    f.close()?;
    Ok(())
}

/// The per-frame datasets of the stitched file: `frame_id` virtual from the first part, the others computed.
fn per_frame(data: &Group, parts: &[Part], n: usize, dir: &Path) -> anyhow::Result<()> {
    let files: Vec<hdf5::File> = parts.iter().map(|p| hdf5::File::open(&p.path)).collect::<Result<_, _>>()?;
    for &(name, how) in PER_FRAME {
        let path = format!("/entry/data/{name}");
        if files.iter().any(|f| f.dataset(&path).is_err()) {
            continue;
        }
        match how {
            Combine::First => {
                let src = relative_path(&parts[0].path, dir)?.display().to_string();
                let len = files[0].dataset(&path)?.shape().first().copied().unwrap_or(0);
                ensure!(len >= n, "{}: {path} holds {len} values for {n} frames", parts[0].path.display());
                data.new_dataset::<u32>().shape([n]).virtual_map(&src, &path, [len], 0..n, [n], 0..n).create(name)?;
            }
            Combine::All => {
                let mut v = vec![1u8; n];
                for f in &files {
                    for (o, x) in v.iter_mut().zip(f.dataset(&path)?.read_raw::<u8>()?) {
                        *o &= u8::from(x != 0);
                    }
                }
                data.new_dataset::<u8>().shape([n]).create(name)?.write_raw(&v[..])?;
            }
            Combine::Sum => {
                let mut v = vec![0u32; n];
                for f in &files {
                    for (o, x) in v.iter_mut().zip(f.dataset(&path)?.read_raw::<u32>()?) {
                        *o = o.saturating_add(x);
                    }
                }
                data.new_dataset::<u32>().shape([n]).create(name)?.write_raw(&v[..])?;
            }
            Combine::Min | Combine::Max => {
                let mut v: Option<Vec<u64>> = None;
                for f in &files {
                    let x = f.dataset(&path)?.read_raw::<u64>()?;
                    v = Some(match v {
                        None => x.into_iter().take(n).collect(),
                        Some(acc) => acc
                            .into_iter()
                            .zip(x)
                            .map(|(a, b)| if matches!(how, Combine::Min) { a.min(b) } else { a.max(b) })
                            .collect(),
                    });
                }
                let v = v.unwrap_or_default();
                ensure!(v.len() == n, "{path}: {} values for {n} frames", v.len());
                data.new_dataset::<u64>().shape([n]).create(name)?.write_raw(&v[..])?;
            }
        }
    }
    Ok(())
}

/// `ringdaq stitch`: checks the parts, writes the stitched file (under a temporary name, renamed when
/// complete), and says what it did.
pub fn stitch(args: &StitchArgs) -> anyhow::Result<Stitched> {
    ensure!(!args.out.exists(), "{} exists; stitch into a new file", args.out.display());
    let parts: Vec<Part> = args.parts.iter().map(|p| read_part(p)).collect::<anyhow::Result<_>>()?;
    let s = check(&parts, args.common_frames, args.allow_missing)?;
    let tmp = writer::format::with_suffix(&args.out, ".partial");
    let r = write(&tmp, &parts, &s);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &args.out).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(s)
}

/// The command: [`stitch`], and one line of what was done on stdout, the warnings on stderr.
pub fn run(args: &StitchArgs) -> anyhow::Result<()> {
    let s = stitch(args)?;
    for w in &s.warnings {
        eprintln!("ringdaq stitch: warning: {w}");
    }
    println!(
        "{}: {} frames of {}×{} from {} parts (a virtual dataset; keep the parts beside it, named relative to it)",
        args.out.display(),
        s.frames,
        s.full_shape[0],
        s.full_shape[1],
        args.parts.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: usize = 4;
    const COLS: usize = 8;

    /// The whole frame `i` of the tests: pixel (y, x) is 1000 i + 10 y + x.
    fn whole(i: usize, y: usize, x: usize) -> u16 {
        (1000 * i + 10 * y + x) as u16
    }

    /// Writes a part holding columns `cols` of frames `0..frames` of [`whole`] (frame ids from `first_id`).
    fn part(dir: &Path, name: &str, cols: std::ops::Range<usize>, frames: usize, first_id: u32) -> PathBuf {
        let path = dir.join(name);
        let f = hdf5::File::create(&path).unwrap();
        let data = f.create_group("entry").unwrap().create_group("data").unwrap();
        let w = cols.len();
        let mut px = Vec::new();
        for i in 0..frames {
            for y in 0..ROWS {
                px.extend(cols.clone().map(|x| whole(i, y, x)));
            }
        }
        data.new_dataset::<u16>().shape([frames, ROWS, w]).create("data").unwrap().write_raw(&px[..]).unwrap();
        let ids: Vec<u32> = (0..frames as u32).map(|i| first_id + i).collect();
        data.new_dataset::<u32>().shape([frames]).create("frame_id").unwrap().write_raw(&ids[..]).unwrap();
        let complete: Vec<u8> = (0..frames).map(|i| u8::from(i != 1 || name != "b.h5")).collect();
        data.new_dataset::<u8>().shape([frames]).create("complete").unwrap().write_raw(&complete[..]).unwrap();
        let det = f.create_group("entry/instrument").unwrap().create_group("detector").unwrap();
        det.new_attr::<u32>().shape(()).create("fill_value").unwrap().write_scalar(&7u32).unwrap();
        let first = (cols.start / 4) as u32;
        let p = PartPlacement {
            full_shape: [ROWS as u64, COLS as u64],
            detector_streams: 2,
            streams: vec![first],
            rects: vec![[0, 0, 0, cols.start as u64, ROWS as u64, w as u64]],
        };
        placement::write_hdf5(&det, &p).unwrap();
        path
    }

    fn args(out: &Path, parts: &[&Path]) -> StitchArgs {
        StitchArgs {
            out: out.to_owned(),
            parts: parts.iter().map(|p| p.to_path_buf()).collect(),
            common_frames: false,
            allow_missing: false,
        }
    }

    /// A directory removed (with everything in it) when the test ends, passed or not; `set/parts` made.
    fn temp(name: &str) -> (writer::conformance::TempDir, PathBuf) {
        let root = writer::conformance::TempDir::new(&format!("stitch-{name}")).unwrap();
        let d = root.path().join("set");
        std::fs::create_dir_all(d.join("parts")).unwrap();
        (root, d)
    }

    #[test]
    fn two_halves_read_as_whole_frames_and_move_together() {
        let (root, d) = temp("halves");
        let a = part(&d.join("parts"), "a.h5", 0..4, 3, 50);
        let b = part(&d.join("parts"), "b.h5", 4..8, 3, 50);
        let out = d.join("whole.h5");
        // In the other order: the placement, not the order, says where a part goes.
        let s = stitch(&args(&out, &[&b, &a])).unwrap();
        assert_eq!((s.frames, s.full_shape, s.warnings.len()), (3, [ROWS, COLS], 0));
        // Moved, the set still reads: the parts are named relative to the stitched file.
        let moved = root.path().join("moved");
        std::fs::rename(&d, &moved).unwrap();
        let f = hdf5::File::open(moved.join("whole.h5")).unwrap();
        let ds = f.dataset(DATA).unwrap();
        assert_eq!(ds.shape(), [3, ROWS, COLS]);
        let px = ds.read_raw::<u16>().unwrap();
        let want: Vec<u16> =
            (0..3).flat_map(|i| (0..ROWS).flat_map(move |y| (0..COLS).map(move |x| whole(i, y, x)))).collect();
        assert_eq!(px, want);
        assert_eq!(f.dataset("/entry/data/frame_id").unwrap().read_raw::<u32>().unwrap(), [50, 51, 52]);
        assert_eq!(f.dataset("/entry/data/complete").unwrap().read_raw::<u8>().unwrap(), [1, 0, 1]);
        let p = placement::read_hdf5(&f.group(placement::DETECTOR_GROUP).unwrap()).unwrap().unwrap();
        assert_eq!((p.streams, p.rects), (vec![0, 1], vec![[0, 0, 0, 0, ROWS as u64, COLS as u64]]));
    }

    #[test]
    fn overlaps_gaps_and_different_frames_are_refused_or_said() {
        let (_root, d) = temp("refused");
        let p = d.join("parts");
        let a = part(&p, "a.h5", 0..4, 3, 50);
        let b = part(&p, "b.h5", 4..8, 3, 50);
        let wide = part(&p, "wide.h5", 2..8, 3, 50);
        let short = part(&p, "short.h5", 4..8, 2, 50);
        let later = part(&p, "later.h5", 4..8, 3, 51);
        let out = d.join("whole.h5");
        let err = |parts: &[&Path]| stitch(&args(&out, parts)).unwrap_err().to_string();
        assert!(err(&[&a, &wide]).contains("overlap: both hold pixel (0, 2)"), "{}", err(&[&a, &wide]));
        assert!(err(&[&a]).contains("sectors 1 are in no part"), "{}", err(&[&a]));
        assert!(err(&[&a, &short]).contains("different numbers of frames"), "{}", err(&[&a, &short]));
        assert!(err(&[&a, &later]).contains("frame 0 is frame id Some(50)"), "{}", err(&[&a, &later]));
        assert!(err(&[&a, &d.join("nope.h5")]).contains("nope.h5"));
        assert!(!out.exists(), "nothing is left after a refusal");
        // Asked for, the common frames and the missing sectors are stitched, with warnings.
        let mut common = args(&out, &[&a, &short]);
        common.common_frames = true;
        let s = stitch(&common).unwrap();
        assert_eq!((s.frames, s.warnings.len()), (2, 1));
        let out2 = d.join("half.h5");
        let mut half = args(&out2, &[&a]);
        half.allow_missing = true;
        let s = stitch(&half).unwrap();
        assert_eq!(s.missing_sectors, [1]);
        let px = hdf5::File::open(&out2).unwrap().dataset(DATA).unwrap().read_raw::<u16>().unwrap();
        assert_eq!((px[3], px[4]), (whole(0, 0, 3), 7), "the missing sector reads as the fill value");
        assert!(stitch(&args(&out, &[&a, &b])).unwrap_err().to_string().contains("exists"));
    }

    #[test]
    fn relative_paths_climb_and_descend() {
        let r = relative_path(Path::new("/a/b/parts/x.h5"), Path::new("/a/b/out")).unwrap();
        assert_eq!(r, PathBuf::from("../parts/x.h5"));
        assert_eq!(relative_path(Path::new("/a/x.h5"), Path::new("/a")).unwrap(), PathBuf::from("x.h5"));
    }
}

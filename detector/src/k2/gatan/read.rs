//! Reading a recording back block by block, the sectors interleaved as the camera sends them.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};

use super::{GatanError, Paths, io, is_lead_in, is_placeholder};
use crate::k2::geometry::{Geometry, HEADER_BYTES, SECTORS};
use crate::k2::header::BlockHeader;
use crate::k2::{IS_GEOMETRY, SUMMIT_GEOMETRY};

/// One block read back.
#[derive(Debug)]
pub struct Block<'a> {
    /// Its sector (0-based; the sector file's place in name order).
    pub sector: usize,
    /// The block, header included.
    pub bytes: &'a [u8],
    /// A placeholder written for a block that did not arrive.
    pub placeholder: bool,
}

/// A recording's sector files, read in the camera's send order: block 0 of every sector, then block 1, ...
#[derive(Debug)]
pub struct Reader {
    g: Geometry,
    paths: Paths,
    files: Vec<BufReader<File>>,
    buf: Vec<u8>,
    next: usize,
    done: bool,
}

impl Reader {
    /// Opens the eight sector files; the first block of the first one tells the mode (IS or Summit by its
    /// `block_size` and sector size).
    pub fn open(paths: Paths) -> Result<Self, GatanError> {
        let mut files = Vec::with_capacity(SECTORS);
        for p in &paths.bins {
            let f = File::open(p).map_err(io("opening", p))?;
            files.push(BufReader::with_capacity(1 << 20, f));
        }
        let first = &paths.bins[0];
        let mut head = [0u8; HEADER_BYTES];
        let got = {
            let buf = files[0].fill_buf().map_err(io("reading", first))?;
            let n = buf.len().min(HEADER_BYTES);
            head[..n].copy_from_slice(&buf[..n]);
            n
        };
        let not_k2 = |why: String| GatanError::NotK2File { path: first.clone(), why };
        if got < HEADER_BYTES {
            return Err(not_k2(format!("{got} bytes, shorter than a block header")));
        }
        let h = BlockHeader::read(&head).map_err(|e| not_k2(e.to_string()))?;
        let g = [IS_GEOMETRY, SUMMIT_GEOMETRY]
            .into_iter()
            .find(|g| {
                h.block_size as usize == g.block_bytes()
                    && usize::from(h.sector_width) == g.sector_width()
                    && usize::from(h.sector_height) == g.sector_height()
            })
            .ok_or_else(|| {
                not_k2(format!(
                    "block size {}, sector {}×{}: neither IS nor Summit",
                    h.block_size, h.sector_width, h.sector_height
                ))
            })?;
        let mut buf = vec![0; g.block_bytes()];
        for (f, p) in files.iter_mut().zip(&paths.bins) {
            // A scan's lead-in block is not part of the stream: step over it.
            let n = f.fill_buf().map_err(io("reading", p))?.len();
            if n >= 8 && is_lead_in(f.buffer()) && f.read_exact(&mut buf).is_err() {
                return Err(not_k2(format!("{}: a lead-in block cut short", p.display())));
            }
        }
        Ok(Self { g, paths, files, buf, next: 0, done: false })
    }

    /// The mode's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.g
    }

    /// The files.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The next block; `None` at the end (the first sector without a whole block left ends the recording).
    pub fn next_block(&mut self) -> Result<Option<Block<'_>>, GatanError> {
        if self.done {
            return Ok(None);
        }
        let sector = self.next % SECTORS;
        let path = &self.paths.bins[sector];
        match self.files[sector].read_exact(&mut self.buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.done = true;
                return Ok(None);
            }
            Err(e) => return Err(io("reading", path)(e)),
        }
        self.next += 1;
        Ok(Some(Block { sector, bytes: &self.buf, placeholder: is_placeholder(&self.buf) }))
    }
}

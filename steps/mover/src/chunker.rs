//! Content-defined chunking of a byte stream (FastCDC 2020), on a blocking
//! thread.

use std::io::{self, Read};

use bytes::Bytes;
use fastcdc::v2020;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// FastCDC's minimum, average and maximum chunk sizes, in bytes.
///
/// The default (256 KiB / 1 MiB / 4 MiB) was chosen by measurement (see the
/// crate README): a tar stream of a mixed tree cut this way yields chunks of
/// about 1 MiB on average; one changed file costs about two chunks (~2 MiB)
/// of upload, while per-object request overhead stays small (1000 objects per
/// GiB) and a chunk fits comfortably in memory many times over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// No cut before this many bytes.
    pub min: u32,
    /// The target average.
    pub avg: u32,
    /// A cut is forced at this many bytes.
    pub max: u32,
}

impl ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB.
    pub const DEFAULT: ChunkerParams = ChunkerParams {
        min: 256 << 10,
        avg: 1 << 20,
        max: 4 << 20,
    };

    /// Checks the sizes against FastCDC's limits.
    pub fn validate(&self) -> Result<()> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&min)
            && (v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&avg)
            && (v2020::MAXIMUM_MIN..=v2020::MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidParams(format!(
                "min {min}, avg {avg}, max {max}: need {}..={} <= {}..={} <= {}..={}",
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX,
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX,
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX
            )))
        }
    }
}

impl Default for ChunkerParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A chunk cut from the stream, not yet hashed.
pub(crate) struct RawChunk {
    /// The bytes (a copy owned by this chunk alone, so that a chunk in
    /// flight never pins the read buffer).
    pub data: Bytes,
}

/// What the chunker saw when the stream ended.
pub(crate) struct StreamEnd {
    /// Length of the whole stream.
    pub total_len: u64,
}

const READ_SIZE: usize = 256 << 10;

/// Reads `source` to its end, cutting it into chunks sent in order on `tx`.
/// A read error is sent as the last item. Returns `None` when the stream did
/// not end cleanly or the receiver went away.
pub(crate) fn run(
    mut source: impl Read,
    params: ChunkerParams,
    tx: mpsc::Sender<Result<RawChunk>>,
) -> Option<StreamEnd> {
    let (min, avg, max) = (
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    );
    let (mask_s, mask_l) = v2020::select_masks(avg, v2020::Normalization::Level1);
    // Room for three maximal chunks: the unchunked rest is moved to the
    // front only when fewer than READ_SIZE bytes are free at the end, every
    // few chunks, instead of after each (and the buffer is zeroed once).
    let cap = (3 * max).max(max + 2 * READ_SIZE);
    let mut buf = vec![0u8; cap];
    let (mut start, mut end) = (0usize, 0usize);
    let mut offset = 0u64;
    let mut read_total = 0u64;
    let mut eof = false;
    loop {
        while !eof && end - start < max {
            if cap - end < READ_SIZE {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            match source.read(&mut buf[end..]) {
                Ok(0) => eof = true,
                Ok(n) => {
                    end += n;
                    read_total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let _ = tx.blocking_send(Err(Error::SourceRead {
                        offset: read_total,
                        source,
                    }));
                    return None;
                }
            }
        }
        if start == end {
            break;
        }
        let (_, n) = v2020::cut(
            &buf[start..end],
            min,
            avg,
            max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        let data = Bytes::copy_from_slice(&buf[start..start + n]);
        start += n;
        let len = data.len() as u64;
        if tx.blocking_send(Ok(RawChunk { data })).is_err() {
            return None;
        }
        offset += len;
    }
    Some(StreamEnd { total_len: offset })
}

/// Cuts an in-memory buffer with the same rule as the streaming chunker
/// (for measurements and tests): the lengths of the chunks, in order.
pub fn cut_lengths(data: &[u8], params: ChunkerParams) -> Vec<usize> {
    let (min, avg, max) = (
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    );
    let (mask_s, mask_l) = v2020::select_masks(avg, v2020::Normalization::Level1);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (_, n) = v2020::cut(
            rest,
            min,
            avg,
            max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        out.push(n);
        rest = &rest[n..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_and_in_memory_cuts_agree() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut data = vec![0u8; 9 << 20];
        rng.fill(&mut data[..]);
        let params = ChunkerParams::DEFAULT;
        let expected = cut_lengths(&data, params);
        let (tx, mut rx) = mpsc::channel(1024);
        let end = run(&data[..], params, tx).expect("clean end");
        let mut got = Vec::new();
        while let Ok(c) = rx.try_recv() {
            got.push(c.expect("chunk").data.len());
        }
        assert_eq!(got, expected);
        assert_eq!(end.total_len, data.len() as u64);
        assert!(params.validate().is_ok());
    }
}

//! Chunked bodies (RFC 9112 section 7.1): a streaming decoder and the clean re-encoding.

use super::is_tchar;
use std::io::Write;

/// Streaming chunked-body decoder (RFC 9112 section 7.1). Feed it bytes; it says which of
/// them are payload and where the message ends, so a body can be passed through verbatim
/// or de-chunked.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Payload bytes left in the current chunk.
    remaining: u64,
    /// Bytes of the current size or trailer line (bounded).
    line_len: usize,
    size_digits: usize,
    in_ext: bool,
    /// The current trailer line, then every trailer field line, re-terminated with CRLF.
    trailers: Vec<u8>,
    /// Where the current trailer line starts in `trailers`.
    line_start: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

/// What one [`ChunkedDecoder::feed`] call found.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the input that belong to this message.
    pub consumed: usize,
    /// Payload ranges within the consumed bytes.
    pub data: Vec<std::ops::Range<usize>>,
    pub done: bool,
}

const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of trailer fields in one body.
pub const MAX_TRAILERS: usize = 8 * 1024;

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// A trailer line ended: an empty one ends the body, any other must be a field line.
    fn end_trailer_line(&mut self) -> Result<(), &'static str> {
        let line = &self.trailers[self.line_start..];
        if line.is_empty() {
            self.state = ChunkState::Done;
            return Ok(());
        }
        let name_end = line.iter().position(|&c| c == b':');
        let valid = name_end.is_some_and(|n| {
            n > 0
                && line[..n].iter().all(|&c| is_tchar(c))
                && line[n + 1..]
                    .iter()
                    .all(|&c| c == b'\t' || (b' '..0x7f).contains(&c) || c >= 0x80)
        });
        if !valid {
            return Err("malformed trailer field");
        }
        self.trailers.extend_from_slice(b"\r\n");
        self.line_start = self.trailers.len();
        self.state = ChunkState::Trailer;
        Ok(())
    }

    /// The trailer field lines, each ending in CRLF (complete once the body is done).
    pub fn trailers(&self) -> &[u8] {
        &self.trailers[..self.line_start]
    }

    /// Append what `fed` (from `input`) becomes on the way out: re-chunked with clean
    /// framing (extensions dropped, trailers re-terminated with CRLF), or only the
    /// payload when `dechunk`.
    pub fn reencode(&self, input: &[u8], fed: &Fed, dechunk: bool, out: &mut Vec<u8>) {
        for r in &fed.data {
            if r.is_empty() {
                continue;
            }
            if dechunk {
                out.extend_from_slice(&input[r.clone()]);
            } else {
                let _ = write!(out, "{:x}\r\n", r.len());
                out.extend_from_slice(&input[r.clone()]);
                out.extend_from_slice(b"\r\n");
            }
        }
        if fed.done && !dechunk {
            out.extend_from_slice(b"0\r\n");
            out.extend_from_slice(self.trailers());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Consume as much of `input` as belongs to the body.
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, &'static str> {
        use ChunkState::*;
        let mut data = Vec::new();
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let c = input[i];
            match self.state {
                Size => {
                    self.line_len += 1;
                    if self.line_len > MAX_CHUNK_LINE {
                        return Err("chunk size line too long");
                    }
                    if c == b'\r' {
                        self.state = SizeLf;
                    } else if c == b'\n' {
                        return Err("bare LF in chunk size line");
                    } else if self.in_ext {
                        // chunk-ext: skipped.
                    } else if let Some(d) = (c as char).to_digit(16) {
                        self.size_digits += 1;
                        if self.size_digits > 15 {
                            return Err("chunk size too large");
                        }
                        self.remaining = self.remaining * 16 + d as u64;
                    } else if c == b';' || c == b' ' || c == b'\t' {
                        if self.size_digits == 0 {
                            return Err("missing chunk size");
                        }
                        self.in_ext = true;
                    } else {
                        return Err("invalid chunk size");
                    }
                    i += 1;
                }
                SizeLf => {
                    if c != b'\n' || self.size_digits == 0 {
                        return Err("malformed chunk size line");
                    }
                    self.line_len = 0;
                    self.size_digits = 0;
                    self.in_ext = false;
                    if self.remaining == 0 {
                        self.state = Trailer;
                        self.line_start = self.trailers.len();
                    } else {
                        self.state = Data;
                    }
                    i += 1;
                }
                Data => {
                    let n = (input.len() - i).min(self.remaining as usize);
                    data.push(i..i + n);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = DataCr;
                    }
                }
                DataCr => {
                    if c != b'\r' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = DataLf;
                    i += 1;
                }
                DataLf => {
                    if c != b'\n' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = Size;
                    i += 1;
                }
                Trailer => {
                    // RFC 9112 2.2: a recipient may take a bare LF as a line end. Trailer
                    // lines are kept and re-sent with CRLF, so no lenient reading of ours
                    // reaches the next hop.
                    match c {
                        b'\r' => self.state = TrailerLf,
                        b'\n' => self.end_trailer_line()?,
                        _ => {
                            if self.trailers.len() >= MAX_TRAILERS {
                                return Err("trailer section too large");
                            }
                            self.trailers.push(c);
                        }
                    }
                    i += 1;
                }
                TrailerLf => {
                    if c != b'\n' {
                        return Err("malformed trailer line");
                    }
                    self.end_trailer_line()?;
                    i += 1;
                }
                Done => break,
            }
        }
        Ok(Fed {
            consumed: i,
            data,
            done: self.state == Done,
        })
    }
}

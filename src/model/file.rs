//! Reading a safetensors file (a checkpoint or a training state) with a bound: the size it may
//! have follows from its header, so a file that is not one (`/dev/zero`, a FIFO, a file whose
//! header claims more than it holds) is refused after a few bytes instead of read until memory
//! runs out.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The largest safetensors header accepted, as the safetensors crate itself caps it: 100 MB
/// (the model configuration and the vocabulary of an unroll checkpoint take far less).
pub const MAX_HEADER: u64 = 100_000_000;

/// One entry of a safetensors header: a tensor's byte range (the `__metadata__` entry has none).
/// Every other field, and every string of the metadata, is skipped without being copied.
#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    data_offsets: Option<(u64, u64)>,
}

/// The kinds of safetensors files unroll reads: what a message calls them, and the action of
/// an I/O error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SafetensorsKind {
    Checkpoint,
    TrainingState,
    /// A PyTorch `state_dict()` saved with safetensors, for `unroll import`.
    StateDict,
}

impl SafetensorsKind {
    fn name(self) -> &'static str {
        match self {
            SafetensorsKind::Checkpoint => "checkpoint",
            SafetensorsKind::TrainingState => "training state",
            SafetensorsKind::StateDict => "state dict",
        }
    }

    fn action(self) -> &'static str {
        match self {
            SafetensorsKind::Checkpoint => "read checkpoint",
            SafetensorsKind::TrainingState => "read training state",
            SafetensorsKind::StateDict => "read state dict",
        }
    }
}

/// Reads the whole safetensors file at `path` (a `kind` of file, which messages name),
/// checking before reading the tensors that it is a regular file, that its header length is at
/// most [`MAX_HEADER`] and that its length is the one its header describes (8 bytes, the
/// header, and the tensors' bytes).
pub fn read_safetensors(path: &Path, kind: SafetensorsKind) -> Result<Vec<u8>> {
    let (what, action) = (kind.name(), kind.action());
    let bad = |m: String| Error::checkpoint(path, m);
    // Looked at before opening: opening a FIFO waits for a writer.
    let before = std::fs::metadata(path).map_err(|e| Error::io(action, path, e))?;
    if !before.is_file() {
        return Err(not_regular(path, what));
    }
    let mut file = File::open(path).map_err(|e| Error::io(action, path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(action, path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, what));
    }
    let len = meta.len();
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix).map_err(|_| {
        bad(format!(
            "not a valid safetensors file: its {len} bytes are too few for a {what}"
        ))
    })?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER {
        return Err(bad(format!(
            "not a valid safetensors file: its header length {n} is over the {MAX_HEADER} bytes \
             a {what} may have"
        )));
    }
    if n > len.saturating_sub(8) {
        return Err(bad(format!(
            "not a valid safetensors file: its header length {n} is more than the file's {len} \
             bytes hold (truncated, or not a {what})"
        )));
    }
    let mut bytes = Vec::with_capacity(8 + n as usize);
    bytes.extend_from_slice(&prefix);
    read_part(&mut file, &mut bytes, n).map_err(|e| Error::io(action, path, e))?;
    let data =
        tensor_bytes(&bytes[8..]).map_err(|m| bad(format!("not a valid safetensors file: {m}")))?;
    let want = 8 + n + data;
    if want != len {
        return Err(bad(format!(
            "not a valid safetensors file: it is {len} bytes but its header describes {want} \
             (truncated, or not a {what})"
        )));
    }
    bytes
        .try_reserve_exact(data as usize)
        .map_err(|_| bad(format!("its {data} bytes of tensors do not fit in memory")))?;
    read_part(&mut file, &mut bytes, data).map_err(|e| Error::io(action, path, e))?;
    let mut more = [0u8; 1];
    if file
        .read(&mut more)
        .map_err(|e| Error::io(action, path, e))?
        > 0
    {
        return Err(bad(
            "grew while it was read: read it again once it is written".into(),
        ));
    }
    Ok(bytes)
}

/// The error for a path that is not a regular file.
fn not_regular(path: &Path, what: &str) -> Error {
    Error::checkpoint(
        path,
        format!("is not a regular file (a directory, device or pipe): give the {what} file itself"),
    )
}

/// Appends exactly `count` bytes of `file` to `bytes`.
fn read_part(file: &mut File, bytes: &mut Vec<u8>, count: u64) -> std::io::Result<()> {
    let got = file.take(count).read_to_end(bytes)?;
    if (got as u64) < count {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the file ended {} bytes early", count - got as u64),
        ));
    }
    Ok(())
}

/// The bytes of tensor data a safetensors header describes: the end of its last tensor.
fn tensor_bytes(header: &[u8]) -> std::result::Result<u64, String> {
    let entries: HashMap<String, Entry> =
        serde_json::from_slice(header).map_err(|e| format!("its header is not JSON ({e})"))?;
    Ok(entries
        .values()
        .filter_map(|e| e.data_offsets.map(|(_, end)| end))
        .max()
        .unwrap_or(0))
}

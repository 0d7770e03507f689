//! The kernel BTF that loading needs, without parsing all of it.
//!
//! aya finds a `tp_btf` or fentry target by kind and name in a parsed
//! `Btf` and hands the kernel its type id; nothing else of the kernel's
//! BTF is used (the object has no CO-RE relocations: offsets come from
//! `offsets`, in a child). Parsing the whole of it (126k types, 5.5 MB on
//! 6.18) peaks at about 23 MiB, the largest allocation closetrace would
//! make. Instead the file is streamed twice, strings then types, to find
//! the ids of the few targets, and aya is given a stand-in with the same
//! ids: each target under its kind and name, every type before it a
//! nameless forward declaration, none after the last target.
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use aya::{Btf, EbpfLoader, Endianness};
use thiserror::Error;

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const KIND_FWD: u32 = 7;

/// The kinds of attach target aya looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetKind {
    /// `btf_trace_<tracepoint>`, for `tp_btf`.
    Typedef = 8,
    /// A kernel function, for fentry.
    Func = 12,
}

#[derive(Debug, Error)]
pub enum AttachBtfError {
    #[error("reading {path}: {error}")]
    Read { path: String, error: io::Error },
    #[error("{path} is not BTF: {what}")]
    Format { path: String, what: String },
    #[error("the stand-in BTF does not parse: {0}")]
    Parse(String),
}

/// Where each wanted target is in the kernel's BTF.
#[derive(Debug, Default, PartialEq, Eq)]
struct Found {
    /// (kind, name) -> type id, for the targets this kernel has.
    ids: HashMap<(TargetKind, String), u32>,
}

/// A `Btf` in which every target of `wanted` that the kernel at `path`
/// has carries its kernel type id; targets it lacks are absent, so aya
/// reports them unknown by name, as it would with the whole BTF.
pub fn read(path: &Path, wanted: &[(TargetKind, String)]) -> Result<Btf, AttachBtfError> {
    let read_err = |error| AttachBtfError::Read {
        path: path.display().to_string(),
        error,
    };
    let file = File::open(path).map_err(read_err)?;
    let found =
        find_targets(BufReader::with_capacity(1 << 16, file), wanted).map_err(|e| match e {
            Scan::Io(error) => read_err(error),
            Scan::Format(what) => AttachBtfError::Format {
                path: path.display().to_string(),
                what,
            },
        })?;
    let blob = stand_in(&found);
    Btf::parse(&blob, Endianness::default()).map_err(|e| AttachBtfError::Parse(e.to_string()))
}

/// An `EbpfLoader` that has not parsed the kernel's BTF. aya's
/// `EbpfLoader::new()` parses all of it, only for `read`'s stand-in to
/// replace it: that parse alone peaks at about 20 MiB. Made in a thread
/// with a private mount namespace in which the file reads empty, the
/// parse fails at once. Where that cannot be arranged (without
/// CAP_SYS_ADMIN) the parse happens, and is dropped when replaced.
pub fn loader<'a>() -> EbpfLoader<'a> {
    let made = std::thread::scope(|s| {
        s.spawn(|| {
            if let Err(e) = hide_file(crate::kernel::SYSFS_BTF) {
                log::debug!("aya parses the whole kernel BTF once: {e}");
            }
            EbpfLoader::new()
        })
        .join()
    });
    made.unwrap_or_else(|_| EbpfLoader::new())
}

/// In the calling thread only: its own mount namespace (and fs), where
/// `path` is covered by /dev/null. Nothing outside the thread sees it, and
/// the namespace ends with the thread.
fn hide_file(path: &str) -> io::Result<()> {
    let path = std::ffi::CString::new(path).map_err(io::Error::other)?;
    let check = |rc: i32| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls on NUL-terminated constants; each result is checked.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS))?;
        // Private first, so the bind below never propagates to the host.
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"/dev/null".as_ptr(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))
    }
}

enum Scan {
    Io(io::Error),
    Format(String),
}

impl From<io::Error> for Scan {
    fn from(e: io::Error) -> Self {
        Scan::Io(e)
    }
}

struct Header {
    types_at: u64,
    types_len: u64,
    strings_at: u64,
    strings_len: u64,
}

fn header(r: &mut impl Read) -> Result<Header, Scan> {
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h)?;
    let u32_at = |i: usize| u64::from(u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    if u16::from_le_bytes([h[0], h[1]]) != BTF_MAGIC {
        return Err(Scan::Format("bad magic (or not little-endian)".into()));
    }
    let hdr_len = u32_at(4);
    Ok(Header {
        types_at: hdr_len + u32_at(8),
        types_len: u32_at(12),
        strings_at: hdr_len + u32_at(16),
        strings_len: u32_at(20),
    })
}

fn find_targets<R: BufRead + Seek>(
    mut r: R,
    wanted: &[(TargetKind, String)],
) -> Result<Found, Scan> {
    let h = header(&mut r)?;
    let offsets = name_offsets(&mut r, &h, wanted)?;
    r.seek(SeekFrom::Start(h.types_at))?;
    let mut found = Found::default();
    let mut left = h.types_len;
    let mut id = 0u32;
    let mut entry = [0u8; 12];
    while left > 0 {
        id += 1;
        r.read_exact(&mut entry)?;
        let name_off = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
        let info = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let kind = (info >> 24) & 0x1f;
        let tail = tail_len(kind, info & 0xffff)
            .ok_or_else(|| Scan::Format(format!("type {id} has unknown kind {kind}")))?;
        for (&(want_kind, name), &off) in &offsets {
            if off == name_off && want_kind as u32 == kind {
                found.ids.insert((want_kind, name.to_string()), id);
            }
        }
        io::copy(&mut (&mut r).take(tail), &mut io::sink())?;
        left = left.saturating_sub(12 + tail);
    }
    Ok(found)
}

/// Bytes that follow a type's 12-byte entry, by kind and vlen.
fn tail_len(kind: u32, vlen: u32) -> Option<u64> {
    let vlen = u64::from(vlen);
    Some(match kind {
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        1 | 14 | 17 => 4,
        3 => 12,
        4 | 5 | 15 | 19 => 12 * vlen,
        6 | 13 => 8 * vlen,
        _ => return None,
    })
}

/// Where each wanted name starts in the string section (BTF strings are
/// deduplicated: each name once).
fn name_offsets<'a, R: BufRead + Seek>(
    r: &mut R,
    h: &Header,
    wanted: &'a [(TargetKind, String)],
) -> Result<HashMap<(TargetKind, &'a str), u32>, Scan> {
    r.seek(SeekFrom::Start(h.strings_at))?;
    let mut strings = r.take(h.strings_len);
    let mut offsets = HashMap::new();
    let mut at = 0u32;
    let mut name = Vec::new();
    loop {
        name.clear();
        let n = strings.read_until(0, &mut name)?;
        if n == 0 {
            break;
        }
        let text = name.strip_suffix(&[0]).unwrap_or(&name);
        for (kind, want) in wanted {
            if want.as_bytes() == text {
                offsets.insert((*kind, want.as_str()), at);
            }
        }
        at += n as u32;
    }
    Ok(offsets)
}

/// The stand-in: forward declarations up to the last target, the targets
/// in place, and a string section of their names alone.
fn stand_in(found: &Found) -> Vec<u8> {
    let last = found.ids.values().copied().max().unwrap_or(0);
    let by_id: HashMap<u32, &(TargetKind, String)> =
        found.ids.iter().map(|(k, &id)| (id, k)).collect();
    let mut strings = vec![0u8];
    let mut types = Vec::with_capacity(last as usize * 12);
    for id in 1..=last {
        let (name_off, kind) = match by_id.get(&id) {
            Some((kind, name)) => {
                let off = strings.len() as u32;
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                (off, *kind as u32)
            }
            None => (0, KIND_FWD),
        };
        types.extend_from_slice(&name_off.to_le_bytes());
        types.extend_from_slice(&(kind << 24).to_le_bytes());
        types.extend_from_slice(&0u32.to_le_bytes());
    }
    blob(&types, &strings)
}

/// A little-endian BTF blob of these type and string sections.
pub(crate) fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(HEADER_LEN + types.len() + strings.len());
    blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
    blob.extend_from_slice(&[1, 0]); // version 1, no flags
    for field in [
        HEADER_LEN as u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&field.to_le_bytes());
    }
    blob.extend_from_slice(types);
    blob.extend_from_slice(strings);
    blob
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use aya::BtfError;
    use aya_obj::btf::BtfKind;

    use super::*;

    /// A BTF of: 1 int "int", 2 struct "s" {int a}, 3 typedef
    /// "btf_trace_x" -> 2, 4 func_proto, 5 func "f" -> 4.
    fn tiny() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0btf_trace_x\0f\0".to_vec();
        let mut t = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, sz: u32, tail: &[u32]| {
            for v in [name, (kind << 24) | vlen, sz].iter().chain(tail) {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        ty(1, 1, 0, 4, &[32]);
        ty(5, 4, 1, 4, &[7, 1, 0]);
        ty(9, 8, 0, 2, &[]);
        ty(0, 13, 1, 1, &[0, 1]);
        ty(21, 12, 1, 4, &[]);
        blob(&t, &strings)
    }

    #[test]
    fn targets_keep_their_ids_and_kinds() {
        let wanted = [
            (TargetKind::Typedef, "btf_trace_x"),
            (TargetKind::Func, "f"),
            // A name that exists with another kind is not a target.
            (TargetKind::Func, "s"),
            (TargetKind::Typedef, "btf_trace_absent"),
        ]
        .map(|(k, n)| (k, n.to_string()));
        let found = find_targets(Cursor::new(tiny()), &wanted).ok().unwrap();
        let full = Btf::parse(&tiny(), Endianness::default()).unwrap();
        let stand = Btf::parse(&stand_in(&found), Endianness::default()).unwrap();
        for (kind, name) in [
            (TargetKind::Typedef, "btf_trace_x"),
            (TargetKind::Func, "f"),
        ] {
            let aya_kind = match kind {
                TargetKind::Typedef => BtfKind::Typedef,
                TargetKind::Func => BtfKind::Func,
            };
            assert_eq!(
                stand.id_by_type_name_kind(name, aya_kind).unwrap(),
                full.id_by_type_name_kind(name, aya_kind).unwrap(),
                "{name}"
            );
        }
        assert_eq!(found.ids.len(), 2);
        assert!(matches!(
            stand.id_by_type_name_kind("btf_trace_absent", BtfKind::Typedef),
            Err(BtfError::UnknownBtfTypeName { .. })
        ));
    }

    /// The file is hidden from the loader's thread only: the process
    /// still reads the kernel's BTF afterwards.
    #[test]
    fn the_loader_hides_the_btf_from_no_one_else() {
        let path = Path::new(crate::kernel::SYSFS_BTF);
        let Ok(before) = std::fs::metadata(path) else {
            return;
        };
        let _loader = loader();
        let after = std::fs::metadata(path).expect("still there");
        assert_eq!(after.len(), before.len());
        assert!(after.len() > 0);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains("/sys/kernel/btf/vmlinux"), "{mounts}");
    }

    #[test]
    fn not_btf_is_refused() {
        let mut blob = tiny();
        blob[0] = 0;
        assert!(matches!(
            find_targets(Cursor::new(blob), &[(TargetKind::Func, "f".into())]),
            Err(Scan::Format(_))
        ));
        assert!(matches!(
            find_targets(Cursor::new(vec![0u8; 5]), &[(TargetKind::Func, "f".into())]),
            Err(Scan::Io(_))
        ));
    }
}

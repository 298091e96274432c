//! Volume trees for the mover's tests and benchmarks, and for the clone
//! tests that move them between simulated clusters: a generator with every
//! attribute `tar` must carry, a mixed-size generator for benchmarks, and a
//! comparer. Shared by path (`#[path = ...] mod tree;`) with
//! `steps/tests`, `tests/` and the benches, so it needs only std, anyhow,
//! rand and blake3.
#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, FileTimes};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to put in a generated tree.
#[derive(Clone, Debug)]
pub struct TreeSpec {
    pub seed: u64,
    pub small_files: usize,
    pub small_max: usize,
    pub large_len: usize,
    pub sparse_len: u64,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            seed: 1,
            small_files: 300,
            small_max: 24 << 10,
            large_len: 6 << 20,
            sparse_len: 64 << 20,
        }
    }
}

/// Bytes that compress somewhat (words) or not at all (random).
pub fn content(rng: &mut StdRng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "ferry ", "volume ", "chunk ", "bucket ", "tar ", "clone ", "\n", "0123 ",
    ];
    if rng.random_bool(0.5) {
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        v
    } else {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
        }
        v.truncate(len);
        v
    }
}

fn set_mtime(path: &Path, secs: u64) -> anyhow::Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let f = File::open(path)?;
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))?;
    Ok(())
}

/// Generates a tree with many small files, one large file, empty dirs,
/// symlinks, hardlinks, a sparse file, a non-UTF-8 name, modes, mtimes and
/// (as root) owners.
pub fn make_tree(root: &Path, spec: &TreeSpec) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let as_root = nix_is_root();
    fs::create_dir_all(root)?;
    let mut dirs = vec![root.to_path_buf()];
    for d in 0..12 {
        let parent = dirs[rng.random_range(0..dirs.len())].clone();
        let dir = parent.join(format!("dir-{d}"));
        fs::create_dir(&dir)?;
        dirs.push(dir);
    }
    for i in 0..spec.small_files {
        let dir = &dirs[rng.random_range(0..dirs.len())];
        let len = rng.random_range(0..=spec.small_max);
        let path = dir.join(format!("file-{i}.dat"));
        fs::write(&path, content(&mut rng, len))?;
        let mode = [0o644, 0o600, 0o755, 0o640, 0o444, 0o4755][rng.random_range(0..6)];
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        if as_root && i % 7 == 0 {
            std::os::unix::fs::chown(&path, Some(1000 + i as u32), Some(2000 + i as u32))?;
        }
        set_mtime(&path, 1_600_000_000 + rng.random_range(0..100_000_000))?;
    }
    // One large file.
    let large = root.join("large.bin");
    let mut f = File::create(&large)?;
    let mut left = spec.large_len;
    while left > 0 {
        let n = left.min(1 << 20);
        f.write_all(&content(&mut rng, n))?;
        left -= n;
    }
    drop(f);
    set_mtime(&large, 1_650_000_000)?;
    // Empty dirs.
    fs::create_dir_all(root.join("empty/nested-empty"))?;
    fs::create_dir(root.join("empty-700"))?;
    fs::set_permissions(root.join("empty-700"), fs::Permissions::from_mode(0o700))?;
    // Symlinks: relative, absolute, dangling, to a dir.
    symlink("large.bin", root.join("link-to-large"))?;
    symlink("/nonexistent/target", root.join("dangling"))?;
    symlink("dir-0", root.join("link-to-dir"))?;
    // Hardlinks.
    fs::write(root.join("hard-a"), b"shared by two names\n")?;
    fs::hard_link(root.join("hard-a"), root.join("dir-0").join("hard-b"))?;
    set_mtime(&root.join("hard-a"), 1_610_000_000)?;
    // A sparse file: data at both ends, a hole in between.
    let sparse = root.join("sparse.img");
    let mut f = File::create(&sparse)?;
    f.write_all(&content(&mut rng, 64 << 10))?;
    f.seek(SeekFrom::Start(spec.sparse_len / 2))?;
    f.write_all(b"middle")?;
    f.set_len(spec.sparse_len)?;
    drop(f);
    set_mtime(&sparse, 1_640_000_000)?;
    // A file name that is not UTF-8.
    let name = OsString::from_vec(b"caf\xe9-latin1.txt".to_vec());
    fs::write(root.join(&name), b"not utf-8 name\n")?;
    set_mtime(&root.join(&name), 1_620_000_000)?;
    if as_root {
        std::os::unix::fs::chown(root.join(&name), Some(4242), Some(4343))?;
    }
    // Directory mtimes last, deepest first.
    let mut all_dirs = dirs.clone();
    all_dirs.extend([
        root.join("empty/nested-empty"),
        root.join("empty"),
        root.join("empty-700"),
    ]);
    all_dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for (i, d) in all_dirs.iter().enumerate() {
        set_mtime(d, 1_500_000_000 + i as u64 * 1000)?;
    }
    Ok(())
}

pub fn nix_is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[derive(PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Option<i64>,
    size: u64,
    content: Option<blake3::Hash>,
    link: Option<OsString>,
    /// Index of the first path (in walk order) sharing this inode.
    hardlink_to: Option<Vec<u8>>,
    sparse: bool,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mode {:o} owner {}:{} mtime {:?} size {} hash {:?} link {:?} hardlink {:?} sparse {}",
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.mtime,
            self.size,
            self.content.map(|h| h.to_hex()[..12].to_string()),
            self.link,
            self.hardlink_to
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            self.sparse
        )
    }
}

fn walk(root: &Path) -> anyhow::Result<BTreeMap<Vec<u8>, Entry>> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = root.join(&rel);
        let m = fs::symlink_metadata(&abs).with_context(|| format!("stat {}", abs.display()))?;
        let ft = m.file_type();
        let key = rel.as_os_str().as_bytes().to_vec();
        let (kind, content, link, mut hardlink_to, sparse) = if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&abs)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
            ("dir", None, None, None, false)
        } else if ft.is_symlink() {
            (
                "symlink",
                None,
                Some(fs::read_link(&abs)?.into_os_string()),
                None,
                false,
            )
        } else if ft.is_file() {
            let data = fs::read(&abs)?;
            let sparse = m.blocks() * 512 < m.size() / 2;
            ("file", Some(blake3::hash(&data)), None, None, sparse)
        } else {
            ("other", None, None, None, false)
        };
        if ft.is_file() && m.nlink() > 1 {
            let first = inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| key.clone());
            if *first != key {
                hardlink_to = Some(first.clone());
            }
        }
        out.insert(
            key,
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                // Symlink times cannot be set portably; the root dir's mtime
                // is the extraction target's.
                mtime: if ft.is_symlink() || rel.as_os_str().is_empty() {
                    None
                } else {
                    Some(m.mtime())
                },
                size: if ft.is_dir() { 0 } else { m.size() },
                content,
                link,
                hardlink_to,
                sparse,
            },
        );
    }
    Ok(out)
}

/// Compares two trees on type, mode, owner, mtime, size, content, symlink
/// target, hardlink structure and sparseness; reports the first difference.
pub fn compare_trees(a: &Path, b: &Path) -> anyhow::Result<()> {
    let ta = walk(a)?;
    let tb = walk(b)?;
    for (k, ea) in &ta {
        let name = String::from_utf8_lossy(k);
        match tb.get(k) {
            None => bail!("{name:?}: in {} but not in {}", a.display(), b.display()),
            Some(eb) if ea != eb => bail!(
                "{name:?} differs:\n  {}: {ea:?}\n  {}: {eb:?}",
                a.display(),
                b.display()
            ),
            Some(_) => {}
        }
    }
    if let Some(k) = tb.keys().find(|k| !ta.contains_key(*k)) {
        bail!(
            "{:?}: in {} but not in {}",
            String::from_utf8_lossy(k),
            b.display(),
            a.display()
        );
    }
    Ok(())
}

/// Mixed sizes for benchmarks: ~20% of `total` bytes in small files
/// (1-64 KiB), ~40% in medium ones (256 KiB-4 MiB), ~40% in large ones
/// (16-64 MiB); half random, half text. Deterministic for a `seed`.
pub fn generate_mixed(root: &Path, total: u64, seed: u64) -> std::io::Result<()> {
    const MIB: u64 = 1 << 20;
    let mut rng = StdRng::seed_from_u64(seed);
    let budgets = [
        (total / 5, 1 << 10, 64 << 10),
        (total * 2 / 5, 256 << 10, 4 << 20),
        (total * 2 / 5, 16 << 20, 64 << 20),
    ];
    let mut n = 0usize;
    for (budget, lo, hi) in budgets {
        let mut left = budget;
        while left > 0 {
            let dir = root.join(format!("d{:02}/e{:02}", n % 37, n % 11));
            fs::create_dir_all(&dir)?;
            let len = (rng.random_range(lo..=hi) as u64).min(left);
            let mut f = File::create(dir.join(format!("f{n}")))?;
            let mut written = 0u64;
            while written < len {
                let piece = (len - written).min(MIB) as usize;
                f.write_all(&content(&mut rng, piece))?;
                written += piece as u64;
            }
            left -= len;
            n += 1;
        }
    }
    Ok(())
}

/// Puts the machine in the same state before a benchmark's timed run:
/// everything synced, the page cache dropped where the process may (as
/// root; [`may_drop_caches`] tells), and the tree `src` read back into it.
/// Without the drop each run is slower than the one before as the page
/// cache fills free memory: eight `tar -c | tar -x` of one 1 GiB tree in a
/// row took from 1.8 s to 7.0 s each, and 2.3 s again after a drop, which
/// favours whichever contender runs first.
pub fn fresh_start(src: &Path) {
    let sync = std::process::Command::new("sync").status();
    assert!(sync.is_ok_and(|s| s.success()), "sync failed");
    let _ = fs::write("/proc/sys/vm/drop_caches", "1");
    let warm = std::process::Command::new("sh")
        .arg("-c")
        .arg("tar -c --sparse -f - -C \"$1\" . | cat > /dev/null")
        .arg("sh")
        .arg(src)
        .status();
    assert!(
        warm.is_ok_and(|s| s.success()),
        "reading {} failed",
        src.display()
    );
}

/// Whether [`fresh_start`] can drop the page cache here.
pub fn may_drop_caches() -> bool {
    fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .is_ok()
}

pub fn os(s: &[u8]) -> OsString {
    std::ffi::OsStr::from_bytes(s).to_os_string()
}

//! `cachalot demo`: a self-contained tour on a local directory, no servers.
//! Creates sample data, mounts it, reads it cold and warm, shows the atomic
//! write path, and unmounts.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use cachalot::backend::Source;
use cachalot::cli::DemoArgs;
use cachalot::mount::{self, MountOptions};

fn sample_data(size: u64) -> Vec<u8> {
    // xorshift: incompressible enough, fast, no dependency.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Read a whole file; afterwards ask the kernel to drop its cached pages of
/// it, so the next read reaches cachalot's page store again.
fn timed_read(path: &Path) -> Result<(Vec<u8>, Duration)> {
    let start = Instant::now();
    let mut file = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let took = start.elapsed();
    // SAFETY: valid fd; advisory call.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    Ok((data, took))
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64().max(1e-9)
}

fn counter(stats: &str, name: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(stats)
        .ok()
        .and_then(|v| v.get(name).and_then(|n| n.as_u64()))
        .unwrap_or(0)
}

pub fn run(args: DemoArgs) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("cachalot-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (backing, cache, mnt) = (
        work.path().join("backing"),
        work.path().join("cache"),
        work.path().join("mnt"),
    );
    for d in [&backing, &cache, &mnt] {
        fs::create_dir_all(d)?;
    }
    let data = sample_data(args.size);
    fs::write(backing.join("dataset.bin"), &data)?;
    fs::create_dir_all(backing.join("docs"))?;
    fs::write(
        backing.join("docs/README.txt"),
        b"hello from the backing directory\n",
    )?;
    println!("backing directory: {}", backing.display());

    let source = Source::parse(&format!("file://{}", backing.display()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mounted = mount::start(MountOptions::new(source, mnt.clone(), cache.clone()))?;
    println!("mounted at:        {}\n", mnt.display());

    let file = mnt.join("dataset.bin");
    let (cold, cold_took) = timed_read(&file)?;
    let after_cold = mounted.fs.stats_json();
    let (warm, warm_took) = timed_read(&file)?;
    let after_warm = mounted.fs.stats_json();
    anyhow::ensure!(
        cold == data && warm == data,
        "data read through the mount differs"
    );
    let reads_cold = counter(&after_cold, "backend_reads");
    let reads_warm = counter(&after_warm, "backend_reads") - reads_cold;
    println!(
        "cold read   {:>6} MiB in {:>8.1?}  {:>8.0} MiB/s  backend reads: {}",
        data.len() >> 20,
        cold_took,
        mib_per_s(data.len(), cold_took),
        reads_cold
    );
    // Which cache answered (the kernel's page cache, the page store's
    // memory tier or its files in the cache dir) the demo cannot tell; that
    // the backend did not is what it shows.
    println!(
        "cached read {:>6} MiB in {:>8.1?}  {:>8.0} MiB/s  backend reads: {}{}",
        data.len() >> 20,
        warm_took,
        mib_per_s(data.len(), warm_took),
        reads_warm,
        if reads_warm == 0 {
            "  (all from cache, none from the backend)"
        } else {
            ""
        }
    );

    // The write path: invisible until close, then complete.
    let target = mnt.join("docs/report.txt");
    let mut w = fs::File::create(&target)?;
    w.write_all(b"first half, ")?;
    let visible_while_writing = backing.join("docs/report.txt").exists();
    w.write_all(b"second half\n")?;
    drop(w);
    let published = fs::read_to_string(backing.join("docs/report.txt"))?;
    println!(
        "\nwrite: while open, docs/report.txt in the backing dir exists: {visible_while_writing}; after close: {:?}",
        published.trim_end()
    );
    println!("stats: {}", mounted.fs.stats_json());
    drop(mounted);
    println!("\nunmounted; removing {}", work.path().display());
    Ok(())
}

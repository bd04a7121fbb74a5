//! Baseline for benches/bench.sh: the same workloads spoken directly
//! with nfs3_client (one connection, sequential requests, no FUSE, no cache).
//!
//! cargo run --release --example nfs_direct -- HOST EXPORT DIR (read FILE | write FILE MIB | ls SUBDIR)

use std::time::Instant;

use nfs3_client::nfs3_types::nfs3::{
    cookieverf3, createhow3, diropargs3, filename3, nfs_fh3, sattr3, stable_how, COMMIT3args,
    CREATE3args, LOOKUP3args, Nfs3Option, Nfs3Result, READ3args, READDIRPLUS3args, WRITE3args,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;
use nfs3_client::Nfs3ConnectionBuilder;

type Res<T> = Result<T, Box<dyn std::error::Error>>;
const CHUNK: u32 = 1 << 20;

fn name(s: &str) -> filename3<'static> {
    filename3(Opaque::owned(s.as_bytes().to_vec()))
}

fn ok<T, E: std::fmt::Debug>(r: Nfs3Result<T, E>, what: &str) -> Res<T> {
    match r {
        Nfs3Result::Ok(v) => Ok(v),
        Nfs3Result::Err((stat, _)) => Err(format!("{what}: {stat}").into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [host, export, dir, op, rest @ ..] = args.as_slice() else {
        eprintln!("usage: nfs_direct HOST EXPORT DIR (read FILE | write FILE MIB | ls SUBDIR)");
        std::process::exit(2);
    };
    let cred = opaque_auth::auth_unix(&auth_unix {
        machinename: Opaque::owned(b"bench".to_vec()),
        ..auth_unix::default()
    });
    let mut conn = Nfs3ConnectionBuilder::new(TokioConnector, host, export)
        .credential(cred)
        .mount()
        .await?;
    let lookup = |dir: nfs_fh3, n: &str| LOOKUP3args {
        what: diropargs3 { dir, name: name(n) },
    };
    let mut dir_fh = conn.root_nfs_fh3();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        dir_fh = ok(conn.lookup(&lookup(dir_fh, part)).await?, "lookup")?.object;
    }
    let started = Instant::now();
    match (op.as_str(), rest) {
        ("read", [file]) => {
            let fh = ok(conn.lookup(&lookup(dir_fh, file)).await?, "lookup")?.object;
            let mut offset = 0u64;
            loop {
                let r = ok(
                    conn.read(&READ3args {
                        file: fh.clone(),
                        offset,
                        count: CHUNK,
                    })
                    .await?,
                    "read",
                )?;
                offset += u64::from(r.count);
                if r.eof || r.count == 0 {
                    break;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "direct read {} MiB in {secs:.2}s = {:.0} MiB/s",
                offset >> 20,
                (offset >> 20) as f64 / secs
            );
        }
        ("write", [file, mib]) => {
            let mib: u64 = mib.parse()?;
            let created = ok(
                conn.create(&CREATE3args {
                    where_: diropargs3 {
                        dir: dir_fh,
                        name: name(file),
                    },
                    how: createhow3::UNCHECKED(sattr3 {
                        mode: Nfs3Option::Some(0o644),
                        ..sattr3::default()
                    }),
                })
                .await?,
                "create",
            )?;
            let Nfs3Option::Some(fh) = created.obj else {
                return Err("no handle from CREATE".into());
            };
            let data = vec![0u8; CHUNK as usize];
            for i in 0..mib {
                ok(
                    conn.write(&WRITE3args {
                        file: fh.clone(),
                        offset: i << 20,
                        count: CHUNK,
                        stable: stable_how::UNSTABLE,
                        data: Opaque::borrowed(&data),
                    })
                    .await?,
                    "write",
                )?;
            }
            ok(
                conn.commit(&COMMIT3args {
                    file: fh,
                    offset: 0,
                    count: 0,
                })
                .await?,
                "commit",
            )?;
            let secs = started.elapsed().as_secs_f64();
            println!(
                "direct write {mib} MiB in {secs:.2}s = {:.0} MiB/s",
                mib as f64 / secs
            );
        }
        ("ls", [sub]) => {
            let fh = ok(conn.lookup(&lookup(dir_fh, sub)).await?, "lookup")?.object;
            let (mut cookie, mut verf, mut n) = (0, cookieverf3::default(), 0usize);
            loop {
                let r = ok(
                    conn.readdirplus(&READDIRPLUS3args {
                        dir: fh.clone(),
                        cookie,
                        cookieverf: verf,
                        dircount: 64 * 1024,
                        maxcount: 512 * 1024,
                    })
                    .await?,
                    "readdirplus",
                )?;
                verf = r.cookieverf;
                let entries = r.reply.entries.into_inner();
                n += entries.len();
                if let Some(last) = entries.last() {
                    cookie = last.cookie;
                }
                if r.reply.eof {
                    break;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!("direct readdirplus of {n} entries in {secs:.3}s");
        }
        _ => {
            eprintln!("unknown operation {op}");
            std::process::exit(2);
        }
    }
    Ok(())
}

//! Direct object_store client for benches/bench.sh: the baseline that
//! cachalot's numbers are compared with. Credentials from AWS_* variables.
//!
//! s3_direct ENDPOINT BUCKET put FILE KEY | get KEY | fill PREFIX N | list PREFIX

use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err(
            "usage: s3_direct ENDPOINT BUCKET put FILE KEY | get KEY | fill PREFIX N | list PREFIX"
                .into(),
        );
    }
    cachalot::backend::s3::install_tls_provider();
    let store = AmazonS3Builder::from_env()
        .with_endpoint(&args[1])
        .with_bucket_name(&args[2])
        .with_allow_http(true)
        .build()?;
    let started = Instant::now();
    let mut bytes = 0u64;
    match args[3].as_str() {
        "put" => {
            let mut file = tokio::fs::File::open(&args[4]).await?;
            let upload = store.put_multipart(&Path::parse(&args[5])?).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, 16 << 20);
            let mut buf = vec![0u8; 8 << 20];
            loop {
                use tokio::io::AsyncReadExt;
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await?;
                writer.write(&buf[..n]);
                bytes += n as u64;
            }
            writer.finish().await?;
        }
        "get" => {
            let mut stream = store.get(&Path::parse(&args[4])?).await?.into_stream();
            while let Some(chunk) = stream.next().await {
                bytes += chunk?.len() as u64;
            }
        }
        "fill" => {
            let n: usize = args[5].parse()?;
            let prefix = args[4].clone();
            futures::stream::iter(0..n)
                .map(|i| {
                    let store = &store;
                    let key = format!("{prefix}/f{i:06}");
                    async move {
                        store
                            .put(&Path::parse(key)?, PutPayload::from_static(b"x"))
                            .await
                    }
                })
                .buffer_unordered(64)
                .try_collect::<Vec<_>>()
                .await?;
        }
        "list" => {
            let listed = store
                .list_with_delimiter(Some(&Path::parse(&args[4])?))
                .await?;
            bytes = listed.objects.len() as u64;
        }
        other => return Err(format!("unknown operation {other}").into()),
    }
    println!("{} {}", started.elapsed().as_secs_f64(), bytes);
    Ok(())
}

// TEMPORARY (not to be committed): serve the disk driver for csi-sanity runs.
#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let d = nodeless_volumes::DiskDriver::new(nodeless_volumes::DiskConfig::new(&a[2], &a[3])).unwrap();
    let l = nodeless_volumes::listen(&a[1]).unwrap();
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    nodeless_volumes::serve_on(l, d, stop).await.unwrap();
}

//! `nodeless-shim` runs once per container, so its private memory is paid per pod. Linked as a
//! position-dependent executable it needs no load-time relocation of its own data (a PIE's
//! `.data.rel.ro` and GOT are written by the loader and become private dirty pages: ~600 KiB per
//! shim here, against ~120 KiB without). Its libraries stay randomised.
fn main() {
    println!("cargo:rustc-link-arg-bin=nodeless-shim=-no-pie");
}

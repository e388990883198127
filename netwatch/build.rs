//! Builds the kernel programs (`netwatch-ebpf`, nightly, `bpfel-unknown-none`) into OUT_DIR,
//! where `probe.rs` embeds them with `include_bytes_aligned!`.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../netwatch-ebpf")
        .canonicalize()?;
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {ebpf_dir:?}"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netwatch-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

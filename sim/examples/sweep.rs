//! The scale sweep without the `zccl` command:
//! `cargo run --release -p zccl-sim --example sweep [-- OUT.json [OUT.svg]]`.

fn main() {
    let s = zccl_sim::sweep::sweep(&Default::default()).expect("sweep");
    print!("{}", s.table());
    let mut args = std::env::args().skip(1);
    if let Some(json) = args.next() {
        std::fs::write(&json, s.to_json() + "\n").expect("write JSON");
    }
    if let Some(svg) = args.next() {
        std::fs::write(&svg, s.to_svg()).expect("write SVG");
    }
}

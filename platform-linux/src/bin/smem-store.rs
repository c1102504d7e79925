//! `smem-store`: standalone config store server. TODO(skeleton).
fn main() {
    eprintln!("smem-store: not built yet");
    std::process::exit(2);
}

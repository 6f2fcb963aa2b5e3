fn main() -> anyhow::Result<()> {
    println!("{}", lb_userspace::ebpf::object()?.len());
    Ok(())
}

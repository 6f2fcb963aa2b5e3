//! Link arguments for the BPF objects.

fn main() {
    // Global BPF functions: bpf-linker internalises every symbol but the
    // programs and maps unless told otherwise, and an internal function is
    // verified inline at each call. See `conntrack::onehop_flow_create`,
    // `partial::onehop_finish_checksum`, `local::onehop_remember_front`,
    // `icmp::onehop_icmp_echo`, `ingress6::onehop_icmp6_echo`,
    // `ndp::onehop_ndp_solicitation`, `csum::onehop_nd_options_sum`,
    // `service6::onehop_direct6`, `nat6::onehop_finish_checksum6`,
    // `icmp6_error::onehop_icmp6_error`, `icmp6_error::onehop_icmp6_error_to_client`.
    println!("cargo:rustc-link-arg-bins=--export=onehop_flow_create");
    println!("cargo:rustc-link-arg-bins=--export=onehop_finish_checksum");
    println!("cargo:rustc-link-arg-bins=--export=onehop_remember_front");
    println!("cargo:rustc-link-arg-bins=--export=onehop_icmp_echo");
    println!("cargo:rustc-link-arg-bins=--export=onehop_icmp6_echo");
    println!("cargo:rustc-link-arg-bins=--export=onehop_ndp_solicitation");
    println!("cargo:rustc-link-arg-bins=--export=onehop_nd_options_sum");
    println!("cargo:rustc-link-arg-bins=--export=onehop_direct6");
    println!("cargo:rustc-link-arg-bins=--export=onehop_finish_checksum6");
    println!("cargo:rustc-link-arg-bins=--export=onehop_icmp6_error");
    println!("cargo:rustc-link-arg-bins=--export=onehop_icmp6_error_to_client");
}

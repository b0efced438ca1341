//! `herald-gateway`: parse the command line, set up logging and metrics, run.

use anyhow::Context;
use clap::Parser;
use herald_gateway::config::{Cli, Command, GenCertArgs, MintArgs};
use herald_gateway::keys::{SigningKey, claims_for, parse_ns_list};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args = herald_gateway::config_file::expand_args(std::env::args_os().collect())?;
    let cli = Cli::parse_from(args);
    match cli.command {
        Some(Command::GenKey { out }) => gen_key(&out),
        Some(Command::MintToken(args)) => mint(&args),
        Some(Command::GenCert(args)) => gen_cert(&args),
        None => {
            init_logging(&cli.serve.log_format);
            let metrics = herald_gateway::server::install_metrics()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(herald_gateway::server::serve(cli.serve, metrics))
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn gen_key(out: &std::path::Path) -> anyhow::Result<()> {
    let key = SigningKey::generate(None)?;
    let private = out.with_extension("key.pem");
    let public = out.with_extension("pub.pem");
    write_private(&private, &key.private_pem())?;
    std::fs::write(&public, key.public_pem())
        .with_context(|| format!("writing {}", public.display()))?;
    println!(
        "private key: {}\npublic key:  {}",
        private.display(),
        public.display()
    );
    Ok(())
}

fn gen_cert(args: &GenCertArgs) -> anyhow::Result<()> {
    let (cert_pem, key_pem) =
        herald_gateway::tls::self_signed_for_days(&args.sans, args.ed25519, args.days)?;
    let cert = args.out.with_extension("crt.pem");
    let key = args.out.with_extension("key.pem");
    if cert.exists() {
        anyhow::bail!("{} exists already", cert.display());
    }
    write_private(&key, &key_pem)?;
    std::fs::write(&cert, cert_pem).with_context(|| format!("writing {}", cert.display()))?;
    println!(
        "certificate: {} ({}, self-signed, for {}, {} days)\nprivate key: {}",
        cert.display(),
        if args.ed25519 {
            "Ed25519"
        } else {
            "ECDSA P-256"
        },
        args.sans.join(", "),
        args.days,
        key.display()
    );
    Ok(())
}

fn write_private(path: &std::path::Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(())
}

fn mint(args: &MintArgs) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("reading {}", args.key.display()))?;
    let key = SigningKey::from_pem(&pem, args.kid.clone())?;
    let mut claims = claims_for(&args.sub, parse_ns_list(&args.ns)?, args.ttl_s);
    claims.iss.clone_from(&args.iss);
    println!("{}", key.mint(&claims, args.aud.as_deref())?);
    Ok(())
}

//! The `zccl` command.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use zccl::topology::{Source, report, xml};

#[derive(Parser)]
#[command(
    name = "zccl",
    version,
    about = "zccl: collective communication for sequence-parallel training"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU/NIC topology of this host: inventory, GPU x NIC matrix, GPU -> NIC table.
    ///
    /// Reads sysfs (or an NCCL topology XML file) and classifies every GPU-NIC
    /// path with NCCL's path types. Honours ZCCL_SYSFS_ROOT, ZCCL_TOPO_FILE and
    /// ZCCL_TOPO_DUMP_FILE.
    Topo(TopoArgs),
}

#[derive(clap::Args)]
struct TopoArgs {
    /// Probe the sysfs tree under DIR instead of / (env: ZCCL_SYSFS_ROOT).
    #[arg(long, value_name = "DIR")]
    sysfs_root: Option<PathBuf>,
    /// Read an NCCL topology XML file instead of probing (env: ZCCL_TOPO_FILE).
    #[arg(long, value_name = "FILE", conflicts_with = "sysfs_root")]
    topo_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Explain each GPU's NIC ranking (table format).
    #[arg(long)]
    explain: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Xml,
}

fn topo(args: TopoArgs) -> Result<()> {
    let source = Source::resolve(args.sysfs_root, args.topo_file, |k| std::env::var(k).ok());
    let label = match &source {
        Source::Sysfs(root) => format!("sysfs:{}", root.display()),
        Source::TopoFile(f) => format!("file:{}", f.display()),
    };
    let topo = source
        .load()
        .with_context(|| format!("cannot read the topology ({label})"))?;
    if let Some(dump) = std::env::var_os("ZCCL_TOPO_DUMP_FILE").filter(|v| !v.is_empty()) {
        xml::save(&topo, std::path::Path::new(&dump))
            .with_context(|| "ZCCL_TOPO_DUMP_FILE: cannot write the topology dump")?;
    }
    let text = match args.format {
        Format::Table => report::render_text(&topo, &label, args.explain),
        Format::Json => report::Report::new(&topo, &label).to_json() + "\n",
        Format::Xml => xml::to_string(&topo),
    };
    print!("{text}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Topo(args) => topo(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace.
            eprintln!("zccl: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

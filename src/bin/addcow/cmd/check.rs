//! `addcow check`: consistency of an image's files, with qemu-img check's exit codes: 0 clean,
//! 2 corruptions, 3 leaks (and no corruption), 1 when the check could not be made.

use crate::fail::{on, Outcome};
use crate::output::{print_json, Format};
use crate::progress::percent;
use addcow::{CheckReport, Severity};
use clap::ValueEnum;
use serde::Serialize;
use std::path::PathBuf;

/// Check an image for corruptions and leaks; with -r, repair what can be repaired safely.
///
/// Exit status: 0 no errors left, 2 corruptions left, 3 leaks left (no corruption), 1 the check
/// could not be made.
#[derive(clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    output: Format,
    /// Repair: `all`, or `leaks` (repairs only an image whose findings are all leaks).
    #[arg(short = 'r', long = "repair", value_enum)]
    repair: Option<Repair>,
    /// The `.add-cow` file.
    file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Repair {
    Leaks,
    All,
}

/// qemu-img check's JSON keys, and the findings.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Json<'a> {
    filename: String,
    format: &'static str,
    check_errors: u64,
    corruptions: u64,
    leaks: u64,
    corruptions_fixed: u64,
    leaks_fixed: u64,
    allocated_clusters: u64,
    total_clusters: u64,
    findings: Vec<FindingJson<'a>>,
}

#[derive(Serialize)]
struct FindingJson<'a> {
    severity: &'static str,
    message: &'a str,
    repaired: bool,
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Corruption => "corruption",
        Severity::Leak => "leak",
        Severity::Note => "note",
    }
}

pub fn run(a: Args) -> Outcome {
    let path = &a.file;
    let mut report = addcow::check(path, false).map_err(on(path))?;
    let only_leaks = report.count(Severity::Corruption, false) == 0;
    let repair = match a.repair {
        Some(Repair::All) => true,
        Some(Repair::Leaks) => only_leaks,
        None => false,
    };
    if repair && report.exit_code() != 0 {
        report = addcow::check(path, true).map_err(on(path))?;
    }
    match a.output {
        Format::Json => print_json(&json(&a.file, &report)),
        Format::Human => print_human(&report, a.repair == Some(Repair::Leaks) && !only_leaks),
    }
    Ok(report.exit_code() as u8)
}

fn json<'a>(file: &std::path::Path, r: &'a CheckReport) -> Json<'a> {
    Json {
        filename: file.display().to_string(),
        format: "add-cow",
        check_errors: 0,
        corruptions: r.count(Severity::Corruption, false),
        leaks: r.count(Severity::Leak, false),
        corruptions_fixed: r.count(Severity::Corruption, true),
        leaks_fixed: r.count(Severity::Leak, true),
        allocated_clusters: r.allocated_clusters,
        total_clusters: r.total_clusters,
        findings: r
            .findings
            .iter()
            .map(|f| FindingJson {
                severity: severity(f.severity),
                message: &f.message,
                repaired: f.repaired,
            })
            .collect(),
    }
}

fn print_human(r: &CheckReport, refused_leaks_only: bool) {
    for f in &r.findings {
        let tag = match (f.severity, f.repaired) {
            (_, true) => "Repaired",
            (Severity::Corruption, false) => "ERROR",
            (Severity::Leak, false) => "Leaked",
            (Severity::Note, false) => "Note",
        };
        println!("{tag}: {}", f.message);
    }
    let (corruptions, leaks) = (
        r.count(Severity::Corruption, false),
        r.count(Severity::Leak, false),
    );
    let fixed = r.count(Severity::Corruption, true) + r.count(Severity::Leak, true);
    if fixed > 0 {
        println!(
            "The following inconsistencies were found and repaired:\n    {fixed} finding(s)\n"
        );
    }
    if corruptions == 0 && leaks == 0 {
        println!("No errors were found on the image.");
    }
    if corruptions > 0 {
        println!(
            "\n{corruptions} errors were found on the image.\n\
             Data may be corrupted, or further writes to the image may corrupt it."
        );
    }
    if leaks > 0 {
        println!(
            "\n{leaks} leaked clusters were found on the image.\n\
             This means waste of disk space, but no harm to data."
        );
    }
    if refused_leaks_only {
        println!(
            "Not repaired: the image has corruptions; -r leaks repairs only leaks (use -r all)."
        );
    }
    if r.total_clusters > 0 {
        println!(
            "{}/{} = {:.2}% allocated",
            r.allocated_clusters,
            r.total_clusters,
            percent(r.allocated_clusters, r.total_clusters)
        );
    }
}

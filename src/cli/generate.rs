//! Shell completions and man pages, generated from the same clap definitions as the
//! parser and `--help`, so that they never drift from what moor accepts.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::control::protocol::{ErrorKind, MoorError};

pub const COMPLETIONS_HELP: &str = "Install (then open a new shell):\n  \
    moor completions bash > ~/.local/share/bash-completion/completions/moor\n  \
    moor completions zsh > ~/.zfunc/_moor     (with fpath+=(~/.zfunc) before compinit in ~/.zshrc)\n  \
    moor completions fish > ~/.config/fish/completions/moor.fish";

pub const MAN_HELP: &str = "Examples:\n  \
    moor man --dir ~/.local/share/man/man1     then: man moor-mount\n  \
    sudo moor man --dir /usr/local/share/man/man1\n  \
    moor man --dir /tmp/moor-man && man -l /tmp/moor-man/moor.1";

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_name = "SHELL")]
    shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages to (made if missing); existing pages there are replaced
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
}

/// Prints the completion script for the chosen shell on stdout.
pub fn completions(args: &CompletionsArgs) -> Result<(), MoorError> {
    clap_complete::generate(args.shell, &mut visible_command(), "moor", &mut std::io::stdout());
    Ok(())
}

/// moor's command line without its hidden commands. clap_complete offers hidden
/// subcommands too (clap-rs/clap#1335), and clap cannot remove one, so the root is built
/// again from the same arguments and the visible subcommands: nothing is restated.
fn visible_command() -> clap::Command {
    let full = super::Cli::command();
    let visible = full.get_subcommands().filter(|s| !s.is_hide_set()).cloned();
    let mut root = clap::Command::new("moor").subcommands(visible);
    for arg in full.get_arguments() {
        root = root.arg(arg.clone());
    }
    if let Some(about) = full.get_about() {
        root = root.about(about.clone());
    }
    root.version(env!("CARGO_PKG_VERSION"))
}

/// Writes one page per command (hidden ones aside) and names each written file.
pub fn man_pages(args: &ManArgs) -> Result<(), MoorError> {
    let cannot = |e: std::io::Error| {
        MoorError::new(
            ErrorKind::Usage,
            format!("cannot write man pages to {}: {e}; pick a directory you can write with --dir", args.dir.display()),
        )
    };
    std::fs::create_dir_all(&args.dir).map_err(cannot)?;
    let mut root = super::Cli::command().disable_help_subcommand(true);
    // Building sets each subcommand's full name ("moor-mount-status"), which names its page.
    root.build();
    for path in write_pages(root, &args.dir).map_err(cannot)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes the page of `cmd` and those of its visible subcommands, depth first.
fn write_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = vec![clap_mangen::Man::new(cmd.clone())
        .source(concat!("moor ", env!("CARGO_PKG_VERSION")))
        .manual("moor manual")
        .generate_to(dir)?];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written.extend(write_pages(sub.clone(), dir)?);
    }
    Ok(written)
}

//! Manual pages of the binaries, rendered from their clap definitions and, for the daemons and
//! the tenant, from their config option tables, so that a page never lists a flag or option the
//! program does not have.
//!
//! Each binary renders its own page (a hidden `--render man` flag), which keeps the crate graph
//! as it is: no generator needs to link every daemon. `scripts/install.sh` calls them.

use clap::Command;
use roff::{Roff, bold, italic, roman};

use crate::config::{Component, Default, OptionSpec};

/// What a binary renders when asked with the hidden `--render` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Render {
    /// Its manual page (roff), on stdout.
    Man,
    /// Its commented default config file (`/usr/etc/keylime/<c>.conf`), on stdout.
    Config,
}

/// The manual page of `cmd` in `section` ("1" for commands, "8" for daemons). With
/// `config`, the page describes that component's config files, options and environment; a
/// command with subcommands gets every subcommand, nested ones included, with its options.
pub fn page(cmd: Command, section: &str, config: Option<(Component, &[OptionSpec])>) -> String {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(section)
        .source(format!("keylime-rs {}", env!("CARGO_PKG_VERSION")))
        .manual("keylime-rs");
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);
    let mut text = String::from_utf8_lossy(&out).into_owned();

    let mut roff = Roff::new();
    if cmd.has_subcommands() {
        roff.control("SH", ["COMMANDS"]);
        let name = cmd.get_name().to_owned();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            commands(&mut roff, &name, sub);
        }
    }
    if let Some((component, options)) = config {
        configuration(&mut roff, component, options);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "kctl(1), keylime_tenant(1), keylime_verifier(8), keylime_registrar(8), keylime_agent(8); \
         /usr/share/doc/keylime-rs/",
    )]);
    text.push_str(&roff.to_roff());
    text
}

/// One subcommand (and, below it, its own subcommands) as `.SS "kctl agents enroll"`.
fn commands(roff: &mut Roff, parent: &str, cmd: &Command) {
    let path = format!("{parent} {}", cmd.get_name());
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            commands(roff, &path, sub);
        }
        return;
    }
    roff.control("SS", [path.as_str()]);
    let mut usage = vec![bold(path.clone())];
    for arg in cmd.get_arguments().filter(|a| a.is_positional() && !a.is_hide_set()) {
        let name = arg.get_value_names().and_then(|v| v.first()).map(|v| v.to_string());
        let name = name.unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
        usage.push(roman(" "));
        usage.push(italic(if arg.is_required_set() { name } else { format!("[{name}]") }));
    }
    if cmd.get_arguments().any(|a| !a.is_positional() && !a.is_hide_set() && !a.is_global_set()) {
        usage.push(roman(" [OPTIONS]"));
    }
    roff.text(usage);
    if let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) {
        roff.control("PP", []);
        roff.text([roman(about.to_string())]);
    }
    // A global flag is documented once, under OPTIONS.
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set() && !a.is_global_set()) {
        if arg.get_long() == Some("help") || arg.get_long() == Some("version") {
            continue;
        }
        roff.control("TP", []);
        roff.text([bold(flag_text(arg))]);
        let help = arg.get_long_help().or_else(|| arg.get_help()).map(|h| h.to_string());
        roff.text([roman(help.unwrap_or_default())]);
    }
}

fn flag_text(arg: &clap::Arg) -> String {
    let value = arg.get_value_names().and_then(|v| v.first()).map(|v| v.to_string());
    let value = value.unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
    let takes_value = arg.get_action().takes_values();
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("-{short}"));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("--{long}"));
    }
    if names.is_empty() {
        return format!("<{value}>");
    }
    let mut text = names.join(", ");
    if takes_value {
        text.push_str(&format!(" <{value}>"));
    }
    text
}

/// FILES, CONFIGURATION (every option with its default) and ENVIRONMENT of a component.
fn configuration(roff: &mut Roff, component: Component, options: &[OptionSpec]) {
    let c = component.name();
    roff.control("SH", ["FILES"]);
    for (path, what) in [
        (
            format!("/usr/etc/keylime/{c}.conf"),
            "Built-in defaults, every option commented; replaced on upgrade, not to be edited.",
        ),
        (format!("/usr/etc/keylime/{c}.conf.d/*.conf"), "Drop-ins of other packages."),
        (format!("/etc/keylime/{c}.conf"), "The operator's settings."),
        (
            format!("/etc/keylime/{c}.conf.d/*.conf"),
            "The operator's drop-ins, read in name order; later files win.",
        ),
    ] {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["CONFIGURATION"]);
    roff.text([roman(format!(
        "TOML. Keys sit at top level or under [{c}]. Unknown keys and bad values are errors \
         naming the file, key and value. Durations are seconds; lists are TOML arrays."
    ))]);
    for spec in options {
        roff.control("TP", []);
        roff.text([bold(spec.name), roman(format!(" (default: {})", default_text(spec)))]);
        roff.text([roman(spec.doc)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (var, what) in [
        (format!("KEYLIME_{}_<OPTION>", c.to_ascii_uppercase()), "Sets an option (upper case name), over the files.".to_owned()),
        (format!("KEYLIME_{}_CONFIG", c.to_ascii_uppercase()), "Read only this file instead of the layered files.".to_owned()),
        ("KEYLIME_DIR".to_owned(), "Sets keylime_dir.".to_owned()),
        (
            "KEYLIME_CONFIG_ROOT".to_owned(),
            "A directory standing in for / when looking up /usr/etc/keylime and /etc/keylime (as --config-root).".to_owned(),
        ),
    ] {
        roff.control("TP", []);
        roff.text([bold(var)]);
        roff.text([roman(what)]);
    }
}

fn default_text(spec: &OptionSpec) -> String {
    match spec.default {
        Default::Value("") => "empty".to_owned(),
        Default::Value(v) => v.to_owned(),
        Default::UnderKeylimeDir(sub) => format!("<keylime_dir>/{sub}"),
        Default::Unset => "unset".to_owned(),
    }
}

//! The optional TOML configuration file (`--config PATH` or `HERALD_CONFIG`).
//!
//! Precedence, lowest first: built-in defaults, the file, `HERALD_*` environment variables, flags.
//! The file uses the flags' names (`heartbeat_ms = 30000` or `heartbeat-ms = 30000`), so there is
//! one list of settings (`herald-gateway --help`). It is applied by turning each key into a flag
//! placed before the real command line, skipping keys whose environment variable is set; later
//! flags override earlier ones (`args_override_self`), which gives the order above.

use anyhow::Context;
use clap::CommandFactory;
use std::ffi::OsString;

/// The command line with the file's settings spliced in, if one was given.
pub fn expand_args(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let path = config_path(&args).or_else(|| std::env::var_os("HERALD_CONFIG"));
    let Some(path) = path else { return Ok(args) };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the config file {}", path.to_string_lossy()))?;
    let from_file = file_args(&text, |name| std::env::var_os(name).is_some())
        .with_context(|| format!("in the config file {}", path.to_string_lossy()))?;
    let mut out = Vec::with_capacity(args.len() + from_file.len());
    let mut rest = args.into_iter();
    out.extend(rest.next());
    out.extend(from_file.into_iter().map(OsString::from));
    out.extend(rest);
    Ok(out)
}

fn config_path(args: &[OsString]) -> Option<OsString> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(v.into());
        }
    }
    None
}

/// Flags for the settings in `text`. `env_set(NAME)` says whether an environment variable
/// overrides a setting.
pub fn file_args(text: &str, env_set: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let cmd = crate::config::Cli::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            anyhow::bail!("unknown setting {key:?} (settings are the long flags of --help)");
        };
        if long == "config" {
            anyhow::bail!("a config file cannot name another config file");
        }
        if arg.get_env().is_some_and(|e| env_set(&e.to_string_lossy())) {
            continue;
        }
        let flag = format!("--{long}");
        match value {
            toml::Value::Boolean(true) => out.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => out.extend([flag, s]),
            toml::Value::Integer(i) => out.extend([flag, i.to_string()]),
            toml::Value::Float(f) => out.extend([flag, f.to_string()]),
            toml::Value::Array(items) => {
                for item in items {
                    let v = match item {
                        toml::Value::String(s) => s,
                        toml::Value::Integer(i) => i.to_string(),
                        other => anyhow::bail!("{key}: unsupported list item {other}"),
                    };
                    out.extend([flag.clone(), v]);
                }
            }
            other => anyhow::bail!("{key}: unsupported value {other}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn file_then_env_then_flags() {
        let text = "heartbeat_ms = 30000\nlisten = \"127.0.0.1:1\"\nauth-key = [\"a=x.pem\", \"b=y.pem\"]\njournal_no_sync = true\nworkers = 3";
        let args = file_args(text, |name| name == "HERALD_WORKERS").unwrap();
        assert!(
            !args.contains(&"--workers".to_owned()),
            "env overrides the file"
        );
        let mut argv = vec!["herald-gateway".to_owned()];
        argv.extend(args);
        argv.extend(["--listen".to_owned(), "127.0.0.1:2".to_owned()]);
        let cli = crate::config::Cli::try_parse_from(argv).unwrap();
        assert_eq!(cli.serve.heartbeat_ms, 30000);
        assert_eq!(cli.serve.listen.port(), 2, "flags override the file");
        assert_eq!(cli.serve.auth_keys, vec!["a=x.pem", "b=y.pem"]);
        assert!(cli.serve.journal_no_sync);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = file_args("heartbeat = 5", |_| false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"heartbeat\""), "{err}");
        assert!(file_args("not toml [", |_| false).is_err());
    }
}

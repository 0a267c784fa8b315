//! The command line of `pidvisor-bench`: a section name followed by
//! `--key value` pairs and bare `--flag`s. `scripts/bench` is the only
//! caller, so there is no help text beyond the errors.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::Res;

/// The options given after the section name.
#[derive(Debug, Default)]
pub struct Opts {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

/// Flags that take no value.
const FLAGS: &[&str] = &["json", "quick", "one-cpu"];

impl Opts {
    /// Parses `--key value` pairs and the flags in [`FLAGS`].
    pub fn parse(args: &[String]) -> Res<Opts> {
        let mut opts = Opts::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(key) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            if FLAGS.contains(&key) {
                opts.flags.push(key.to_string());
                continue;
            }
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            opts.values.insert(key.to_string(), value.clone());
        }
        Ok(opts)
    }

    /// Whether `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// A string option, or an error naming it when missing.
    pub fn string(&self, key: &str) -> Res<&str> {
        self.values.get(key).map(String::as_str).ok_or_else(|| format!("missing --{key}"))
    }

    /// A path option.
    pub fn path(&self, key: &str) -> Res<PathBuf> {
        self.string(key).map(PathBuf::from)
    }

    /// A number option, or `default` when absent.
    pub fn number(&self, key: &str, default: u64) -> Res<u64> {
        match self.values.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key} {v:?}: not a number")),
        }
    }

    /// A comma-separated list of numbers, or `default` when absent.
    pub fn numbers(&self, key: &str, default: &[u64]) -> Res<Vec<u64>> {
        match self.values.get(key) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .split(',')
                .map(|n| n.trim().parse().map_err(|_| format!("--{key} {v:?}: not a list of numbers")))
                .collect(),
        }
    }

    /// The supervisor's PID (`--pid`).
    pub fn pid(&self) -> Res<i32> {
        let pid = self.number("pid", 0)?;
        i32::try_from(pid).ok().filter(|p| *p > 0).ok_or_else(|| "missing or invalid --pid".to_string())
    }
}

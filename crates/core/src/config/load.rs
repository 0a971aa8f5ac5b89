//! Layering: the defaults, then a TOML file, then `ROUTER__SECTION__KEY` variables, then
//! command-line flags, merged as TOML tables (so a file can change one field of a default
//! model and keep the rest, which struct-level serde defaults cannot do), remembering which
//! variable or flag set a key so that its problem can name it. Deprecated keys are renamed
//! here, before the raw config is read.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Problem, RawConfig, check};

/// The prefix of environment variables that override config fields.
pub const ENV_PREFIX: &str = "ROUTER__";

/// Renamed keys, the old name first: it still works, with a warning at start, unless the new
/// one is set too.
const RENAMED: &[(&str, &str)] = &[("bedrock.call_timeout_ms", "bedrock.default_deadline_ms")];

/// Values set on the command line, applied over the file and the environment before the
/// config is checked, each with the flag that set it.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    flags: Vec<Override>,
    fallbacks: Vec<Override>,
}

#[derive(Debug, Clone)]
struct Override {
    flag: &'static str,
    key: &'static str,
    value: Result<toml::Value, String>,
}

impl Overrides {
    /// Sets the dotted `key` (e.g. `routing.threshold`) to `value`, when there is one, as
    /// `flag` (e.g. `--threshold`) says.
    pub fn flag<T: Serialize>(
        mut self,
        flag: &'static str,
        key: &'static str,
        value: Option<T>,
    ) -> Self {
        self.flags.extend(Override::new(flag, key, value));
        self
    }

    /// Sets the dotted `key` to `value` when neither the file, a variable nor a flag sets it:
    /// a default of the mode `flag` (e.g. `--simulate`) starts, in place of the built-in one.
    pub fn fallback<T: Serialize>(
        mut self,
        flag: &'static str,
        key: &'static str,
        value: Option<T>,
    ) -> Self {
        self.fallbacks.extend(Override::new(flag, key, value));
        self
    }
}

impl Override {
    fn new<T: Serialize>(flag: &'static str, key: &'static str, value: Option<T>) -> Option<Self> {
        value.map(|value| Self {
            flag,
            key,
            value: toml::Value::try_from(value).map_err(|e| e.to_string()),
        })
    }
}

/// The file, the variables and the flags merged, and what set each key that a variable or a
/// flag set, or that a deprecated name set.
#[derive(Debug, Default)]
struct Layers {
    table: toml::Table,
    origins: BTreeMap<String, String>,
}

impl Config {
    /// Loads the defaults, then `path` (if any), then `ROUTER__…` variables from `env`, then
    /// `overrides`, and checks the result once.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut layers = Layers::default();
        let source = match path {
            Some(path) => {
                layers.table = read_file(path)?;
                path.display().to_string()
            }
            None => "configuration".to_owned(),
        };
        for (var, value) in env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                let keys = rest.split("__").map(str::to_ascii_lowercase).collect();
                layers.set(keys, parse_env_value(&value), &var)?;
            }
        }
        for o in &overrides.flags {
            let value = o.value.clone().map_err(|message| ConfigError::Parse {
                origin: o.flag.to_owned(),
                message,
            })?;
            layers.set(o.key.split('.').map(str::to_owned).collect(), value, o.flag)?;
        }
        for o in &overrides.fallbacks {
            if layers.has(o.key) {
                continue;
            }
            let value = o.value.clone().map_err(|message| ConfigError::Parse {
                origin: o.flag.to_owned(),
                message,
            })?;
            layers.set(o.key.split('.').map(str::to_owned).collect(), value, o.flag)?;
        }
        let (renamed, deprecations) = layers.rename(&source);
        let problems = match check::config(layers.raw(source)?) {
            Ok(config) if renamed.is_empty() => {
                return Ok(Config {
                    deprecations,
                    ..config
                });
            }
            Ok(_) => renamed,
            Err(found) => renamed.into_iter().chain(found).collect(),
        };
        Err(ConfigError::Invalid(
            problems.into_iter().map(|p| layers.attribute(p)).collect(),
        ))
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        origin: path.display().to_string(),
        message: e.to_string(),
    })
}

impl Layers {
    /// Whether a layer sets the dotted `key`.
    fn has(&self, key: &str) -> bool {
        let mut node = Some(&self.table);
        let mut keys = key.split('.').peekable();
        while let Some(part) = keys.next() {
            let Some(value) = node.and_then(|table| table.get(part)) else {
                return false;
            };
            if keys.peek().is_none() {
                return true;
            }
            node = value.as_table();
        }
        false
    }

    /// Sets the key `keys` to `value`, as `origin` (a variable or a flag) says.
    fn set(
        &mut self,
        keys: Vec<String>,
        value: toml::Value,
        origin: &str,
    ) -> Result<(), ConfigError> {
        let refuse = |message: String| ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        };
        if keys.iter().any(String::is_empty) {
            return Err(refuse("empty key in the name".to_owned()));
        }
        let (last, parents) = keys
            .split_last()
            .ok_or_else(|| refuse("no key in the name".to_owned()))?;
        let mut node = &mut self.table;
        for key in parents {
            node = node
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| refuse(format!("`{key}` is not a section")))?;
        }
        node.insert(last.clone(), value);
        self.origins
            .insert(keys.join("."), format!("set by {origin}"));
        Ok(())
    }

    /// Moves each deprecated key's value to its new name; the problems (both names set) and the
    /// deprecation warnings.
    fn rename(&mut self, source: &str) -> (Vec<Problem>, Vec<String>) {
        let (mut problems, mut deprecations) = (Vec::new(), Vec::new());
        for &(old, new) in RENAMED {
            let (Some((section, old_leaf)), Some((_, new_leaf))) =
                (old.rsplit_once('.'), new.rsplit_once('.'))
            else {
                continue;
            };
            let Some(table) = self
                .table
                .get_mut(section)
                .and_then(toml::Value::as_table_mut)
            else {
                continue;
            };
            let Some(value) = table.remove(old_leaf) else {
                continue;
            };
            let origin = self.origins.remove(old);
            if table.contains_key(new_leaf) {
                problems.push(Problem {
                    key: old.to_owned(),
                    message: format!(
                        "is the deprecated name of `{new}`, which is set too; keep only `{new}`"
                    ),
                    origin,
                });
                continue;
            }
            table.insert(new_leaf.to_owned(), value);
            deprecations.push(format!(
                "config field `{old}` ({}) is deprecated: it is now `{new}`, which means the same",
                origin.clone().unwrap_or_else(|| format!("set in {source}"))
            ));
            self.origins.insert(
                new.to_owned(),
                origin.unwrap_or_else(|| format!("set as `{old}`")),
            );
        }
        (problems, deprecations)
    }

    /// The layers over the defaults, read as a [`RawConfig`].
    fn raw(&self, source: String) -> Result<RawConfig, ConfigError> {
        let mut table =
            toml::Table::try_from(RawConfig::default()).map_err(|e| ConfigError::Parse {
                origin: "built-in defaults".to_owned(),
                message: e.to_string(),
            })?;
        merge(&mut table, self.table.clone());
        RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
            let message = e.to_string();
            let origin = match self.origin_in(&message) {
                Some(origin) => format!("{source} ({origin})"),
                None => source,
            };
            ConfigError::Parse { origin, message }
        })
    }

    /// What set the key a deserialisation error is about (which the message names as
    /// "in `section.key`", or "in `section`" for an unknown key).
    fn origin_in(&self, message: &str) -> Option<&String> {
        self.origins.iter().find_map(|(key, origin)| {
            let (parent, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            (message.contains(&format!("in `{key}`"))
                || (message.contains(&format!("in `{parent}`"))
                    && message.contains(&format!("`{leaf}`"))))
            .then_some(origin)
        })
    }

    /// Adds what set a problem's key (or a key inside it, for a whole caller or list).
    fn attribute(&self, mut problem: Problem) -> Problem {
        if problem.origin.is_none() {
            let base = problem.key.split('[').next().unwrap_or(&problem.key);
            let inside = format!("{base}.");
            problem.origin = self
                .origins
                .get(base)
                .or_else(|| {
                    self.origins
                        .iter()
                        .find_map(|(key, origin)| key.starts_with(&inside).then_some(origin))
                })
                .cloned();
        }
        problem
    }
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A variable's value as a TOML value when it parses as one (numbers, booleans, arrays), else
/// as a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

//! The machinery behind the `mc serve` settings table in [`super`]: how one declaration
//! becomes a clap argument, a config-file key, a default, a parser with its range and a field
//! of [`super::Config`].
//!
//! * A [`Source`] says how a raw value is read: its clap value type and action, and its TOML
//!   type (numbers accept TOML integers, floats and strings; paths stay `PathBuf`s so a
//!   non-UTF-8 path works on the command line).
//! * A [`Kind`] turns the raw value that won (flag/env > file) into the resolved value, or its
//!   default when none was given, and says what the default and the valid range are, for
//!   `--help`, docs/configuration.md and config/mc.toml.
//! * [`declare_settings!`](declare_settings) generates `ServeArgs`, the file's key struct,
//!   `Config`, the resolution and the [`Setting`] table from one list.

use std::fmt::Display;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches};
use serde::de::DeserializeOwned;

use super::{err, parse_duration, ConfigError};

/// A help heading of `mc serve --help`: the titles and the order of the sections of
/// docs/configuration.md ("`mc serve` settings") and config/mc.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heading {
    /// Listen addresses.
    Network,
    /// Certificates, token keys, secrets and `--dev`.
    Tls,
    /// Shard count, CPU placement and the shard loop.
    Shards,
    /// Queue bounds, capacity, rate limits, QUIC Retry.
    Limits,
    /// Connection and meeting lifetimes.
    Timeouts,
    /// Log format and filter.
    Logging,
    /// The Global Controller link, secrets of the control plane, identity.
    Gc,
    /// WebTransport URL and origins.
    WebTransport,
    /// The config file itself and hidden test switches.
    Other,
}

impl Heading {
    /// Every heading, in the order of `--help` and the docs.
    pub const ALL: [Heading; 9] = [
        Heading::Network,
        Heading::Tls,
        Heading::Shards,
        Heading::Limits,
        Heading::Timeouts,
        Heading::Logging,
        Heading::Gc,
        Heading::WebTransport,
        Heading::Other,
    ];

    /// The title, as `--help` and the docs print it.
    pub fn title(self) -> &'static str {
        match self {
            Heading::Network => "Network",
            Heading::Tls => "TLS, keys and development mode",
            Heading::Shards => "Shards and CPUs",
            Heading::Limits => "Limits",
            Heading::Timeouts => "Timeouts",
            Heading::Logging => "Logging",
            Heading::Gc => "GC and control plane",
            Heading::WebTransport => "WebTransport",
            Heading::Other => "Other",
        }
    }
}

/// Where a setting may be given besides its flag and environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Also a key of the config file.
    File,
    /// Flag and environment only (`--config` itself).
    FlagOnly,
    /// Flag and environment only, hidden from `--help` (test and diagnosis switches).
    Hidden,
}

/// One declared setting, as `--help`, the docs and the tests see it.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The `Config` field and file key, e.g. `mailbox_size`.
    pub name: &'static str,
    /// Its `--help` heading and docs section.
    pub heading: Heading,
    /// File key or flag only, shown or hidden.
    pub place: Place,
    /// The help text: the declaration's doc comment on one line, without its final period.
    pub help: String,
    /// The default as `--help` shows it (`None`: unset, or a switch that is off).
    pub default_help: Option<String>,
    /// The default as a value the flag, variable and file accept (`None`: there is no fixed
    /// one, e.g. it is computed at start-up).
    pub default_value: Option<String>,
    /// The valid range, as docs/configuration.md writes it (numbers and durations).
    pub range: Option<String>,
    configure: fn(Arg) -> Arg,
}

impl Setting {
    /// Describes a setting of kind `K` (reading through `S`, resolving to `V`).
    pub(super) fn new<S: Source, V, K: Kind<Src = S, Value = V>>(
        kind: &K,
        name: &'static str,
        heading: Heading,
        place: Place,
        doc: &[&str],
    ) -> Self {
        let help = doc
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let help = help.strip_suffix('.').unwrap_or(&help).to_owned();
        Setting {
            name,
            heading,
            place,
            help,
            default_help: kind.default_help(),
            default_value: kind.default_value(),
            range: kind.range(),
            configure: S::arg,
        }
    }

    /// The long flag without its dashes, e.g. `mailbox-size`.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }

    /// The environment variable, e.g. `MC_MAILBOX_SIZE`.
    pub fn env(&self) -> String {
        format!("MC_{}", self.name.to_ascii_uppercase())
    }

    /// The config-file key, if the file has one.
    pub fn file_key(&self) -> Option<&'static str> {
        (self.place == Place::File).then_some(self.name)
    }

    /// The clap argument: flag, variable, value name, help with the default, heading.
    pub(super) fn arg(&self) -> Arg {
        let mut help = self.help.clone();
        if let Some(d) = &self.default_help {
            help.push_str(&format!(" [default: {d}]"));
        }
        let arg = Arg::new(self.name)
            .long(self.flag())
            .env(self.env())
            .value_name(self.name.to_ascii_uppercase())
            .help(help)
            .help_heading(self.heading.title())
            .hide(self.place == Place::Hidden)
            .required(false);
        (self.configure)(arg)
    }
}

/// The `--` name of a setting in messages: `mailbox_size` → `mailbox-size`.
pub(super) fn flag_of(name: &str) -> String {
    name.replace('_', "-")
}

/// How the raw value of a setting is read from the command line and the file.
pub trait Source {
    /// What clap yields for the flag (or its environment variable).
    type Arg: Clone + Send + Sync + std::fmt::Debug + 'static;
    /// What the TOML file holds for the key.
    type File: DeserializeOwned + std::fmt::Debug;
    /// Sets clap's action and value parser.
    fn arg(arg: Arg) -> Arg;
    /// Takes the value clap read, if the flag or its variable was given.
    fn take(m: &mut ArgMatches, id: &str) -> Option<Self::Arg> {
        m.remove_one::<Self::Arg>(id)
    }
    /// The file's value in the flag's form.
    fn from_file(v: Self::File) -> Self::Arg;
}

/// Text: a string on the command line and in the file.
#[derive(Debug)]
pub enum TextSrc {}

impl Source for TextSrc {
    type Arg = String;
    type File = String;
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::Set)
            .value_parser(clap::value_parser!(String))
    }
    fn from_file(v: String) -> String {
        v
    }
}

/// A number: a string on the command line; a TOML integer, float or string in the file.
#[derive(Debug)]
pub enum NumSrc {}

impl Source for NumSrc {
    type Arg = String;
    type File = toml::Value;
    fn arg(arg: Arg) -> Arg {
        TextSrc::arg(arg)
    }
    fn from_file(v: toml::Value) -> String {
        match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        }
    }
}

/// A path: an OS string on the command line, a string in the file.
#[derive(Debug)]
pub enum PathSrc {}

impl Source for PathSrc {
    type Arg = PathBuf;
    type File = PathBuf;
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::Set)
            .value_parser(clap::value_parser!(PathBuf))
    }
    fn from_file(v: PathBuf) -> PathBuf {
        v
    }
}

/// A switch: a flag without a value (its variable takes `true` or `false`), a TOML boolean in
/// the file. A switch given as off (`MC_DEV=false`) counts as not given, so it never turns off
/// what the file turned on.
#[derive(Debug)]
pub enum SwitchSrc {}

impl Source for SwitchSrc {
    type Arg = bool;
    type File = bool;
    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::SetTrue)
            .value_parser(clap::value_parser!(bool))
    }
    fn take(m: &mut ArgMatches, id: &str) -> Option<bool> {
        m.remove_one::<bool>(id).filter(|on| *on)
    }
    fn from_file(v: bool) -> bool {
        v
    }
}

/// What resolving a setting may depend on besides its own value: the settings declared as
/// context (resolved first, with no context of their own).
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    /// Development mode.
    pub dev: bool,
}

/// How a setting's raw value becomes its resolved value.
pub trait Kind {
    /// How the raw value is read.
    type Src: Source;
    /// The resolved value: the type of the `Config` field.
    type Value;
    /// Parses and checks `raw` (the flag/env value, else the file's), or yields the default.
    /// `flag` is the setting's flag without dashes, for messages.
    fn resolve(
        &self,
        flag: &str,
        raw: Option<<Self::Src as Source>::Arg>,
        ctx: &Ctx,
    ) -> Result<Self::Value, ConfigError>;
    /// The default as `--help` shows it.
    fn default_help(&self) -> Option<String> {
        self.default_value()
    }
    /// The default as a value the setting accepts, when there is a fixed one.
    fn default_value(&self) -> Option<String> {
        None
    }
    /// The valid range, as the docs write it.
    fn range(&self) -> Option<String> {
        None
    }
}

/// Resolves one setting: flag/env (already merged by clap) > file > default.
pub(super) fn resolve_one<S: Source, V, K: Kind<Src = S, Value = V>>(
    kind: &K,
    name: &str,
    given: Option<S::Arg>,
    file: Option<S::File>,
    ctx: &Ctx,
) -> Result<V, ConfigError> {
    kind.resolve(
        &flag_of(name),
        given.or_else(|| file.map(S::from_file)),
        ctx,
    )
}

/// A switch, off unless turned on.
pub struct Switch;

impl Kind for Switch {
    type Src = SwitchSrc;
    type Value = bool;
    fn resolve(&self, _: &str, raw: Option<bool>, _: &Ctx) -> Result<bool, ConfigError> {
        Ok(raw.unwrap_or(false))
    }
}

/// A number with a default and an inclusive range.
pub struct Number<T> {
    /// The default.
    pub default: T,
    /// The smallest valid value.
    pub min: T,
    /// The largest valid value.
    pub max: T,
}

impl<T> Kind for Number<T>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    type Src = NumSrc;
    type Value = T;
    fn resolve(&self, flag: &str, raw: Option<String>, _: &Ctx) -> Result<T, ConfigError> {
        let Some(raw) = raw else {
            return Ok(self.default);
        };
        let Ok(v) = raw.trim().parse::<T>() else {
            return err(format!("--{flag}: `{raw}` is not a number"));
        };
        // Written so that a value outside every order (a float NaN) is out of range too.
        if !(v >= self.min && v <= self.max) {
            return err(format!(
                "--{flag}: {v} is out of range ({}..={})",
                self.min, self.max
            ));
        }
        Ok(v)
    }
    fn default_value(&self) -> Option<String> {
        Some(self.default.to_string())
    }
    fn range(&self) -> Option<String> {
        Some(format!("{}..={}", self.min, self.max))
    }
}

/// A duration (see [`parse_duration`]) with a default and an inclusive range.
pub struct Time {
    /// The default.
    pub default: Duration,
    /// The shortest valid value.
    pub min: Duration,
    /// The longest valid value.
    pub max: Duration,
}

impl Kind for Time {
    type Src = TextSrc;
    type Value = Duration;
    fn resolve(&self, flag: &str, raw: Option<String>, _: &Ctx) -> Result<Duration, ConfigError> {
        let Some(raw) = raw else {
            return Ok(self.default);
        };
        let d = parse_duration(&raw).map_err(|e| ConfigError(format!("--{flag}: {e}")))?;
        if d < self.min || d > self.max {
            return err(format!(
                "--{flag}: {raw} is out of range ({:?}..={:?})",
                self.min, self.max
            ));
        }
        Ok(d)
    }
    fn default_value(&self) -> Option<String> {
        Some(format_duration(self.default))
    }
    fn range(&self) -> Option<String> {
        let min = if self.min.is_zero() {
            "0".to_owned()
        } else {
            format_duration(self.min)
        };
        Some(format!("{min}..={}", format_duration(self.max)))
    }
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest of `h`, `s`, `ms`,
/// `us` that divides it (`60s`, not `1m`; `1h`; `20ms`; `0s`).
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us == 0 {
        "0s".to_owned()
    } else if us.is_multiple_of(3_600_000_000) {
        format!("{}h", us / 3_600_000_000)
    } else if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// A socket address `IP:port`, with its own default in development mode where that differs.
pub struct Address {
    /// The default.
    pub default: &'static str,
    /// The default with `--dev`, if different.
    pub dev_default: Option<&'static str>,
}

impl Kind for Address {
    type Src = TextSrc;
    type Value = SocketAddr;
    fn resolve(
        &self,
        flag: &str,
        raw: Option<String>,
        ctx: &Ctx,
    ) -> Result<SocketAddr, ConfigError> {
        let raw = raw.unwrap_or_else(|| {
            match self.dev_default {
                Some(d) if ctx.dev => d,
                _ => self.default,
            }
            .to_owned()
        });
        raw.trim().parse().map_err(|_| {
            ConfigError(format!(
                "--{flag}: `{raw}` is not an address like 0.0.0.0:4433"
            ))
        })
    }
    fn default_help(&self) -> Option<String> {
        Some(match self.dev_default {
            Some(dev) => format!("{}; {dev} with --dev", self.default),
            None => self.default.to_owned(),
        })
    }
    fn default_value(&self) -> Option<String> {
        Some(self.default.to_owned())
    }
}

/// A value taken as given (any text, any path), unset by default.
pub struct Given<S>(PhantomData<S>);

impl<S> Given<S> {
    /// The kind.
    pub const fn new() -> Self {
        Given(PhantomData)
    }
}

impl<S: Source> Kind for Given<S> {
    type Src = S;
    type Value = Option<S::Arg>;
    fn resolve(&self, _: &str, raw: Option<S::Arg>, _: &Ctx) -> Result<Self::Value, ConfigError> {
        Ok(raw)
    }
}

/// Any text, with a fixed default.
pub struct Text {
    /// The default.
    pub default: &'static str,
}

impl Kind for Text {
    type Src = TextSrc;
    type Value = String;
    fn resolve(&self, _: &str, raw: Option<String>, _: &Ctx) -> Result<String, ConfigError> {
        Ok(raw.unwrap_or_else(|| self.default.to_owned()))
    }
    fn default_value(&self) -> Option<String> {
        Some(self.default.to_owned())
    }
}

/// The parser of a [`Parsed`] setting: flag name (for messages), raw value, context.
pub type ParseFn<S, V> = fn(&str, Option<<S as Source>::Arg>, &Ctx) -> Result<V, ConfigError>;

/// A setting with its own parser; its default is computed or depends on the context, so
/// `--help` describes it in words.
pub struct Parsed<S: Source, V> {
    /// The default in words for `--help` (`None`: unset, nothing to say).
    pub default: Option<&'static str>,
    /// The parser.
    pub parse: ParseFn<S, V>,
}

impl<S: Source, V> Kind for Parsed<S, V> {
    type Src = S;
    type Value = V;
    fn resolve(&self, flag: &str, raw: Option<S::Arg>, ctx: &Ctx) -> Result<V, ConfigError> {
        (self.parse)(flag, raw, ctx)
    }
    fn default_help(&self) -> Option<String> {
        self.default.map(str::to_owned)
    }
}

/// Declares the `mc serve` settings once and generates from the list:
///
/// * `ServeArgs`, with a hand-rolled [`clap::Args`] impl that adds one argument per setting
///   (long flag, `MC_*` variable, help with the default, heading), grouped in
///   [`Heading::ALL`] order;
/// * `FileConfig`, the file's keys (serde, unknown keys refused), in declaration order;
/// * `Ctx` values and `Config`, the resolved settings, one field per setting;
/// * `resolve_settings`, flag/env > file > default for each setting, in declaration order;
/// * `settings()`, the table `--help`, the docs check and the tests read.
///
/// Each entry is `/// help` `[Heading] name: ValueType, SourceType = kind;`. The groups:
/// `config_file` (the `--config` flag itself), `context` (settings resolved first, that
/// others' defaults depend on), `file` (flag, variable and file key), `hidden` (flag and
/// variable only, not in `--help`).
macro_rules! declare_settings {
    (
        config_file: $(#[doc = $cfg_doc:literal])* [$cfg_heading:ident] $cfg:ident;
        context: $(
            $(#[doc = $ctx_doc:literal])*
            [$ctx_heading:ident] $ctx:ident: $ctx_ty:ty, $ctx_src:ty = $ctx_kind:expr;
        )*
        file: $(
            $(#[doc = $doc:literal])*
            [$heading:ident] $name:ident: $ty:ty, $src:ty = $kind:expr;
        )*
        hidden: $(
            $(#[doc = $h_doc:literal])*
            [$h_heading:ident] $hidden:ident: $h_ty:ty, $h_src:ty = $h_kind:expr;
        )*
    ) => {
        /// `mc serve` flags (merged with their `MC_*` environment variables by clap); the
        /// file and the defaults fill in the rest in [`Config::resolve`].
        #[derive(Debug, Default)]
        pub struct ServeArgs {
            $cfg: Option<PathBuf>,
            $( $ctx: Option<<$ctx_src as Source>::Arg>, )*
            $( $name: Option<<$src as Source>::Arg>, )*
            $( $hidden: Option<<$h_src as Source>::Arg>, )*
        }

        /// The keys of the TOML file (the flags' names with `_`).
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $( $ctx: Option<<$ctx_src as Source>::File>, )*
            $( $name: Option<<$src as Source>::File>, )*
        }

        /// The validated `serve` configuration: one field per setting (see `mc serve --help`
        /// and docs/configuration.md).
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $ctx_doc])* pub $ctx: $ctx_ty, )*
            $( $(#[doc = $doc])* pub $name: $ty, )*
            $( $(#[doc = $h_doc])* pub $hidden: $h_ty, )*
        }

        /// Every `mc serve` setting in declaration order, `--config` first.
        pub fn settings() -> Vec<Setting> {
            vec![
                Setting::new::<PathSrc, Option<PathBuf>, _>(
                    &Given::<PathSrc>::new(),
                    stringify!($cfg),
                    Heading::$cfg_heading,
                    Place::FlagOnly,
                    &[$($cfg_doc),*],
                ),
                $( Setting::new::<$ctx_src, $ctx_ty, _>(
                    &$ctx_kind,
                    stringify!($ctx),
                    Heading::$ctx_heading,
                    Place::File,
                    &[$($ctx_doc),*],
                ), )*
                $( Setting::new::<$src, $ty, _>(
                    &$kind,
                    stringify!($name),
                    Heading::$heading,
                    Place::File,
                    &[$($doc),*],
                ), )*
                $( Setting::new::<$h_src, $h_ty, _>(
                    &$h_kind,
                    stringify!($hidden),
                    Heading::$h_heading,
                    Place::Hidden,
                    &[$($h_doc),*],
                ), )*
            ]
        }

        /// Resolves every setting but `--config` (already read into `file`).
        fn resolve_settings(args: ServeArgs, file: FileConfig) -> Result<Config, ConfigError> {
            let ctx = Ctx {
                $( $ctx: setting::resolve_one::<$ctx_src, $ctx_ty, _>(
                    &$ctx_kind,
                    stringify!($ctx),
                    args.$ctx,
                    file.$ctx,
                    &Ctx::default(),
                )?, )*
            };
            Ok(Config {
                $( $ctx: ctx.$ctx.clone(), )*
                $( $name: setting::resolve_one::<$src, $ty, _>(
                    &$kind,
                    stringify!($name),
                    args.$name,
                    file.$name,
                    &ctx,
                )?, )*
                $( $hidden: setting::resolve_one::<$h_src, $h_ty, _>(
                    &$h_kind,
                    stringify!($hidden),
                    args.$hidden,
                    None,
                    &ctx,
                )?, )*
            })
        }

        impl clap::FromArgMatches for ServeArgs {
            fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
                Self::from_arg_matches_mut(&mut m.clone())
            }
            fn from_arg_matches_mut(m: &mut clap::ArgMatches) -> Result<Self, clap::Error> {
                Ok(ServeArgs {
                    $cfg: PathSrc::take(m, stringify!($cfg)),
                    $( $ctx: <$ctx_src as Source>::take(m, stringify!($ctx)), )*
                    $( $name: <$src as Source>::take(m, stringify!($name)), )*
                    $( $hidden: <$h_src as Source>::take(m, stringify!($hidden)), )*
                })
            }
            fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
                self.update_from_arg_matches_mut(&mut m.clone())
            }
            fn update_from_arg_matches_mut(
                &mut self,
                m: &mut clap::ArgMatches,
            ) -> Result<(), clap::Error> {
                let new = Self::from_arg_matches_mut(m)?;
                if new.$cfg.is_some() {
                    self.$cfg = new.$cfg;
                }
                $( if new.$ctx.is_some() { self.$ctx = new.$ctx; } )*
                $( if new.$name.is_some() { self.$name = new.$name; } )*
                $( if new.$hidden.is_some() { self.$hidden = new.$hidden; } )*
                Ok(())
            }
        }

        impl clap::Args for ServeArgs {
            fn augment_args(cmd: clap::Command) -> clap::Command {
                let all = settings();
                // clap prints headings in the order it first meets them.
                Heading::ALL.iter().fold(cmd, |cmd, heading| {
                    all.iter()
                        .filter(|s| s.heading == *heading)
                        .fold(cmd, |cmd, s| cmd.arg(s.arg()))
                })
            }
            fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
                Self::augment_args(cmd)
            }
        }
    };
}

pub(super) use declare_settings;

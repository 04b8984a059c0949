//! Opening a checkpoint store from a `--db` value.
//!
//! | `--db` value | store |
//! |---|---|
//! | `./file.db`, `/abs/file.db`, `file.db` (a plain path) | [`SqliteSaver`] on that file |
//! | `sqlite:PATH`, `sqlite://PATH` | [`SqliteSaver`] on `PATH` (`sqlite::memory:`: in memory) |
//! | `postgres://…`, `postgresql://…` | `PostgresSaver` (cargo feature `postgres`) |
//! | `redis://…`, `redis+unix://…`, `unix://…` | `RedisSaver` (cargo feature `redis`) |
//! | `memory:` | [`InMemorySaver`] (empty; gone when the command ends) |

use std::path::PathBuf;
use std::sync::Arc;

use cairn_checkpoint::{CheckpointSaver, InMemorySaver};
use cairn_sqlite::SqliteSaver;

use crate::error::{CliError, Result};

/// Where a `--db` value points, parsed but not opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database.
    SqliteMemory,
    /// A PostgreSQL URL.
    Postgres(String),
    /// A Redis URL.
    Redis(String),
    /// The in-memory reference store.
    Memory,
}

/// Whether opening may create a new, empty database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The database must already exist (commands that read a thread): a missing SQLite
    /// file is an error rather than silently creating an empty one.
    Existing,
    /// Create the database if needed (migration targets, the demo).
    Create,
}

impl Location {
    /// Parses a `--db` value.
    ///
    /// ```
    /// use cairn_cli::backend::Location;
    /// assert_eq!(Location::parse("memory:").unwrap(), Location::Memory);
    /// assert!(matches!(Location::parse("./cairn.db").unwrap(), Location::SqliteFile(_)));
    /// assert!(matches!(Location::parse("sqlite:/tmp/x.db").unwrap(), Location::SqliteFile(_)));
    /// assert!(Location::parse("mysql://localhost/db").is_err());
    /// assert_eq!(Location::parse(":memory:").unwrap(), Location::SqliteMemory);
    /// ```
    pub fn parse(value: &str) -> Result<Location> {
        let value = value.trim();
        if value.is_empty() {
            return Err(CliError::Usage(
                "empty --db value; give a SQLite path or a URL (sqlite:, postgres://, redis://, memory:)"
                    .into(),
            ));
        }
        // SQLite's own name for a private in-memory database, not a file name.
        if value == ":memory:" {
            return Ok(Location::SqliteMemory);
        }
        let Some(scheme) = scheme_of(value) else {
            return Ok(Location::SqliteFile(PathBuf::from(value)));
        };
        let rest = &value[scheme.len() + 1..];
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                match path {
                    "" => Err(CliError::Usage(
                        "sqlite: needs a path, e.g. sqlite:./cairn.db or sqlite::memory:".into(),
                    )),
                    ":memory:" => Ok(Location::SqliteMemory),
                    _ => Ok(Location::SqliteFile(PathBuf::from(path))),
                }
            }
            "postgres" | "postgresql" => Ok(Location::Postgres(value.to_owned())),
            "redis" | "rediss" | "redis+unix" | "unix" => Ok(Location::Redis(value.to_owned())),
            "memory" | "mem" => Ok(Location::Memory),
            other => Err(CliError::Usage(format!(
                "unsupported database URL scheme {other:?} in {:?}; use a SQLite path, \
                 sqlite:PATH, postgres://..., redis://... or memory:",
                redact(value)
            ))),
        }
    }
}

/// The URL scheme of `value`, if it has one. A single letter followed by `:` is a Windows
/// drive, not a scheme.
fn scheme_of(value: &str) -> Option<&str> {
    let colon = value.find(':')?;
    let scheme = &value[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic() || scheme.len() < 2 {
        return None;
    }
    chars
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        .then_some(scheme)
}

/// `value` with any password replaced by `***`, for messages and summaries.
///
/// ```
/// assert_eq!(cairn_cli::backend::redact("postgres://ada:s3cret@db/cairn"), "postgres://ada:***@db/cairn");
/// assert_eq!(cairn_cli::backend::redact("./cairn.db"), "./cairn.db");
/// ```
pub fn redact(value: &str) -> String {
    let Some(start) = value.find("://").map(|i| i + 3) else {
        return value.to_owned();
    };
    let authority_end = value[start..]
        .find(['/', '?', '#'])
        .map_or(value.len(), |i| start + i);
    let authority = &value[start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return value.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &value[..start],
            &userinfo[..colon],
            &value[start + at..]
        ),
        None => value.to_owned(),
    }
}

/// An opened store and how to name it in messages.
#[derive(Clone)]
pub struct Store {
    /// The saver.
    pub saver: Arc<dyn CheckpointSaver>,
    /// The `--db` value with passwords hidden.
    pub name: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

/// Opens the store a `--db` value names.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use cairn_cli::backend::{open, Mode};
/// let store = open("memory:", Mode::Create).await.unwrap();
/// assert_eq!(store.name, "memory:");
/// let err = open("/definitely/not/here.db", Mode::Existing).await.unwrap_err();
/// assert!(err.to_string().contains("does not exist"));
/// # });
/// ```
pub async fn open(value: &str, mode: Mode) -> Result<Store> {
    let name = redact(value.trim());
    let open_error = |message: String| CliError::Open {
        target: name.clone(),
        message,
    };
    let saver: Arc<dyn CheckpointSaver> = match Location::parse(value)? {
        Location::SqliteFile(path) => {
            if mode == Mode::Existing && !path.exists() {
                return Err(CliError::NotFound(format!(
                    "database file {} does not exist (pass --db or set CAIRN_DB; \
                     `cairn demo` creates ./cairn-demo.db)",
                    path.display()
                )));
            }
            if path.is_dir() {
                return Err(open_error("it is a directory, not a SQLite file".into()));
            }
            let saver = match mode {
                // Inspecting: a file that is not a Cairn database is refused untouched.
                Mode::Existing => SqliteSaver::open_existing(&path),
                Mode::Create => SqliteSaver::open(&path),
            };
            Arc::new(saver.map_err(|e| open_error(e.to_string()))?)
        }
        Location::SqliteMemory => {
            Arc::new(SqliteSaver::in_memory().map_err(|e| open_error(e.to_string()))?)
        }
        Location::Memory => Arc::new(InMemorySaver::new()),
        Location::Postgres(url) => open_postgres(&url).await.map_err(|e| wrap_open(e, &name))?,
        Location::Redis(url) => open_redis(&url).await.map_err(|e| wrap_open(e, &name))?,
    };
    Ok(Store { saver, name })
}

fn wrap_open(error: CliError, name: &str) -> CliError {
    match error {
        CliError::Saver(e) => CliError::Open {
            target: name.to_owned(),
            message: e.to_string(),
        },
        other => other,
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Arc<dyn CheckpointSaver>> {
    Ok(Arc::new(cairn_postgres::PostgresSaver::connect(url).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &str) -> Result<Arc<dyn CheckpointSaver>> {
    Err(CliError::FeatureMissing {
        backend: "PostgreSQL",
        feature: "postgres",
    })
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str) -> Result<Arc<dyn CheckpointSaver>> {
    Ok(Arc::new(cairn_redis::RedisSaver::connect(url).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_url: &str) -> Result<Arc<dyn CheckpointSaver>> {
    Err(CliError::FeatureMissing {
        backend: "Redis",
        feature: "redis",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let file = |p: &str| Location::SqliteFile(PathBuf::from(p));
        assert_eq!(Location::parse("cairn.db").unwrap(), file("cairn.db"));
        assert_eq!(Location::parse("./a:b.db").unwrap(), file("./a:b.db"));
        assert_eq!(Location::parse("C:\\x\\y.db").unwrap(), file("C:\\x\\y.db"));
        assert_eq!(Location::parse("sqlite:x.db").unwrap(), file("x.db"));
        assert_eq!(
            Location::parse("sqlite:///tmp/x.db").unwrap(),
            file("/tmp/x.db")
        );
        assert_eq!(
            Location::parse("sqlite::memory:").unwrap(),
            Location::SqliteMemory
        );
        assert_eq!(Location::parse("memory:").unwrap(), Location::Memory);
        assert!(matches!(
            Location::parse("postgresql://u@h/db").unwrap(),
            Location::Postgres(_)
        ));
        assert!(matches!(
            Location::parse("redis://127.0.0.1/").unwrap(),
            Location::Redis(_)
        ));
        let err = Location::parse("mysql://u:pw@h/db").unwrap_err();
        assert!(err.to_string().contains("\"mysql\""), "{err}");
        assert!(!err.to_string().contains("pw"), "password hidden: {err}");
        assert!(Location::parse("sqlite:").is_err());
        assert!(Location::parse("  ").is_err());
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("postgres://ada@h/db"), "postgres://ada@h/db");
        assert_eq!(
            redact("postgres://a:b@h/db?x=a@b"),
            "postgres://a:***@h/db?x=a@b"
        );
    }

    #[cfg(not(feature = "postgres"))]
    #[tokio::test]
    async fn missing_feature_is_named() {
        let err = open("postgres://localhost/db", Mode::Existing)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`postgres` feature"), "{err}");
    }
}

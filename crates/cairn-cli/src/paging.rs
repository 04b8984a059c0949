//! Reading long listings page by page, and finding threads and checkpoints.
//!
//! `CheckpointSaver::list` returns checkpoints with their values, so commands never list a
//! whole database at once: [`Pager`] asks for [`PAGE_SIZE`] checkpoints at a time, newest
//! first, continuing with `before = <last id>`.

use cairn_checkpoint::{CheckpointConfig, CheckpointSaver, CheckpointTuple, ListQuery};

use crate::error::{CliError, Result};

/// How many checkpoints one `list` call returns at most.
pub const PAGE_SIZE: usize = 100;

/// Walks the result of a [`ListQuery`] page by page, newest first.
///
/// Several threads can hold checkpoints with the same id (`copy_thread` and `cairn migrate`
/// keep ids), and `before` is strict, so a page boundary falling among equal ids would skip
/// some of them. At each boundary the pager therefore fetches every checkpoint with the
/// boundary id in one extra query.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use cairn_checkpoint::*;
/// use cairn_cli::paging::Pager;
/// let saver = InMemorySaver::new();
/// let mut config = CheckpointConfig::thread("t");
/// for step in 0..5 {
///     config = saver.put(&config, Checkpoint::new(),
///         CheckpointMetadata::new(CheckpointSource::Loop, step), Default::default()).await?;
/// }
/// let mut pager = Pager::new(&saver, ListQuery::thread("t")).page_size(2);
/// let mut steps = Vec::new();
/// while let Some(page) = pager.next_page().await.unwrap() {
///     steps.extend(page.iter().map(|t| t.metadata.step.unwrap()));
/// }
/// assert_eq!(steps, [4, 3, 2, 1, 0]);
/// # Ok::<(), Error>(()) }).unwrap();
/// ```
pub struct Pager<'a> {
    saver: &'a dyn CheckpointSaver,
    query: ListQuery,
    page_size: usize,
    before: Option<String>,
    done: bool,
}

impl<'a> Pager<'a> {
    /// A pager over `query` (its `before` is where the walk starts; its `limit` is ignored).
    pub fn new(saver: &'a dyn CheckpointSaver, query: ListQuery) -> Self {
        Pager {
            saver,
            before: query.before.clone(),
            query: ListQuery {
                limit: None,
                before: None,
                ..query
            },
            page_size: PAGE_SIZE,
            done: false,
        }
    }

    /// Sets the page size (at least 1).
    pub fn page_size(mut self, size: usize) -> Self {
        self.page_size = size.max(1);
        self
    }

    /// The next page, `None` when the listing is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Vec<CheckpointTuple>>> {
        if self.done {
            return Ok(None);
        }
        let mut query = self.query.clone();
        query.before = self.before.clone();
        query.limit = Some(self.page_size);
        let mut items = self.saver.list(&query).await?;
        if items.len() < self.page_size || self.query.checkpoint_id.is_some() {
            self.done = true;
            return Ok((!items.is_empty()).then_some(items));
        }
        let Some(last) = items.last().map(|t| t.checkpoint.id.clone()) else {
            self.done = true;
            return Ok(None);
        };
        // Every checkpoint with the boundary id, whichever thread or namespace holds it.
        items.retain(|t| t.checkpoint.id != last);
        let ties = ListQuery {
            checkpoint_id: Some(last.clone()),
            ..self.query.clone()
        };
        items.extend(self.saver.list(&ties).await?);
        self.before = Some(last);
        Ok(Some(items))
    }
}

/// Fails with a helpful [`CliError::NotFound`] unless `thread_id` has a checkpoint in some
/// namespace.
pub async fn require_thread(saver: &dyn CheckpointSaver, db: &str, thread_id: &str) -> Result<()> {
    let found = saver.list(&ListQuery::thread(thread_id).limit(1)).await?;
    if found.is_empty() {
        return Err(CliError::NotFound(format!(
            "thread {thread_id:?} not found in {db} (run `cairn threads` to list threads)"
        )));
    }
    Ok(())
}

/// Finds a checkpoint of `thread_id` in namespace `ns`: the latest when `id` is `None`, else
/// the one whose id is `id` or, failing that, the only one whose id starts with `id`.
pub async fn find_checkpoint(
    saver: &dyn CheckpointSaver,
    db: &str,
    thread_id: &str,
    ns: &str,
    id: Option<&str>,
) -> Result<CheckpointTuple> {
    let config = CheckpointConfig::thread(thread_id).with_ns(ns);
    let Some(id) = id else {
        return match saver.get_tuple(&config).await? {
            Some(t) => Ok(t),
            None => Err(missing_namespace(saver, db, thread_id, ns).await),
        };
    };
    if let Some(t) = saver
        .get_tuple(&config.clone().with_checkpoint_id(id))
        .await?
    {
        return Ok(t);
    }
    require_thread(saver, db, thread_id).await?;
    if id.len() < MIN_PREFIX {
        return Err(CliError::Usage(format!(
            "checkpoint {id:?} is not an id of thread {thread_id:?}, and too short to be taken \
             as the start of one: give at least {MIN_PREFIX} characters (run `cairn history \
             {thread_id}` to list its checkpoints)"
        )));
    }
    // A prefix of an id, as people copy them from `cairn history`. An id as long as a whole
    // one (a UUID) that was not found is no prefix of another: no need to read the thread.
    let mut matches = Vec::new();
    if id.len() < FULL_ID_LEN {
        let mut pager = Pager::new(saver, ListQuery::thread(thread_id).ns(ns));
        while let Some(page) = pager.next_page().await? {
            matches.extend(page.into_iter().filter(|t| t.checkpoint.id.starts_with(id)));
            if matches.len() > 1 {
                break;
            }
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(CliError::NotFound(format!(
            "checkpoint {id:?} not found in thread {thread_id:?}{} (run `cairn history {thread_id}` to list its checkpoints)",
            ns_suffix(ns)
        ))),
        _ => Err(CliError::Usage(format!(
            "checkpoint id prefix {id:?} matches several checkpoints of thread {thread_id:?}; give more of the id"
        ))),
    }
}

/// The fewest characters of a checkpoint id taken as its prefix.
const MIN_PREFIX: usize = 4;

/// The length of a whole checkpoint id (a UUID as text).
const FULL_ID_LEN: usize = 36;

/// The error for a thread without checkpoints in `ns`: names the namespaces it has.
async fn missing_namespace(
    saver: &dyn CheckpointSaver,
    db: &str,
    thread_id: &str,
    ns: &str,
) -> CliError {
    if let Err(e) = require_thread(saver, db, thread_id).await {
        return e;
    }
    let mut namespaces = std::collections::BTreeSet::new();
    let mut pager = Pager::new(saver, ListQuery::thread(thread_id));
    loop {
        match pager.next_page().await {
            Ok(Some(page)) => {
                namespaces.extend(page.into_iter().map(|t| t.config.checkpoint_ns));
            }
            Ok(None) => break,
            Err(e) => return e,
        }
    }
    let names: Vec<String> = namespaces.iter().map(|n| format!("{n:?}")).collect();
    CliError::NotFound(format!(
        "thread {thread_id:?} has no checkpoints in namespace {ns:?}; its namespaces: {} (pass --ns)",
        names.join(", ")
    ))
}

/// `, namespace "x"` for a non-root namespace, empty for the root.
pub fn ns_suffix(ns: &str) -> String {
    if ns.is_empty() {
        String::new()
    } else {
        format!(", namespace {ns:?}")
    }
}

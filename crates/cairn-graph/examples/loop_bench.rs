//! Super-steps per second of a 1-field loop graph, without a saver and on the in-memory
//! saver: `cargo run --release -p cairn-graph --example loop_bench [steps]`.

use std::sync::Arc;
use std::time::Instant;

use cairn_checkpoint::InMemorySaver;
use cairn_graph::{RunConfig, State, StateGraph, END, START};

#[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
struct Counter {
    n: u64,
}

fn graph(limit: u64) -> StateGraph<Counter> {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_conditional_edges(
            "inc",
            move |s: &Counter| if s.n < limit { "inc" } else { END },
        );
    g
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: u64 = std::env::args().nth(1).map_or(Ok(200_000), |s| s.parse())?;
    let config = RunConfig::thread("bench").with_recursion_limit(steps as usize + 10);

    let app = graph(steps).compile_without_saver()?;
    let t = Instant::now();
    let out = app
        .invoke(Some(CounterUpdate::default()), config.clone())
        .await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "no saver:       {} steps in {secs:.3}s = {:.0} steps/s",
        out.n,
        out.n as f64 / secs
    );

    let saver_steps = steps.min(50_000);
    let app = graph(saver_steps).compile(Arc::new(InMemorySaver::new()))?;
    let t = Instant::now();
    let out = app.invoke(Some(CounterUpdate::default()), config).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "InMemorySaver:  {} steps in {secs:.3}s = {:.0} steps/s",
        out.n,
        out.n as f64 / secs
    );
    Ok(())
}

//! Task notifications: seed 001's `TaskCreatedEvent`, a notification handler and a
//! projection, all fed from the durable log.
//!
//! Creating a task stores `task.created`. Two readers follow the log on their own:
//! - a durable consumer (`task-notifications`) tells the project's members, with retries
//!   and a dead-letter queue, resuming where it stopped after a restart;
//! - a projection keeps a board per project (open and completed tasks) in the store,
//!   checkpointed atomically with its views, so it can be rebuilt by replay at any time.
//!
//! Run it: `cargo run --example task_notifications`

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bifrost_bus::{Bus, ConsumerOptions, GroupFilter, HandlerError};
use bifrost_core::{EventStore, LogFilter, RecordedEvent};
use bifrost_sourcing::{Aggregate, DomainEvent, ProjectionRunner, Repository, View, ViewProjection};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub(crate) enum TaskEvent {
    /// Seed 001's `TaskCreatedEvent`.
    #[serde(rename = "task.created")]
    Created {
        task_id: String,
        title: String,
        description: String,
        created_by: String,
        workspace_id: String,
        project_id: String,
    },
    #[serde(rename = "task.completed")]
    Completed { task_id: String, project_id: String, completed_by: String },
}

impl DomainEvent for TaskEvent {}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Task {
    project_id: Option<String>,
    completed: bool,
}

pub(crate) enum TaskCommand {
    Create {
        task_id: String,
        title: String,
        description: String,
        created_by: String,
        workspace_id: String,
        project_id: String,
    },
    Complete {
        task_id: String,
        completed_by: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskError {
    #[error("the task already exists")]
    Exists,
    #[error("no such task")]
    Missing,
    #[error("a task needs a title")]
    NoTitle,
}

impl Aggregate for Task {
    const TYPE: &'static str = "task";
    type Event = TaskEvent;
    type Command = TaskCommand;
    type Error = TaskError;

    fn decide(&self, command: &TaskCommand) -> Result<Vec<TaskEvent>, TaskError> {
        match command {
            TaskCommand::Create { .. } if self.project_id.is_some() => Err(TaskError::Exists),
            TaskCommand::Create { title, .. } if title.trim().is_empty() => Err(TaskError::NoTitle),
            TaskCommand::Create { task_id, title, description, created_by, workspace_id, project_id } => {
                Ok(vec![TaskEvent::Created {
                    task_id: task_id.clone(),
                    title: title.clone(),
                    description: description.clone(),
                    created_by: created_by.clone(),
                    workspace_id: workspace_id.clone(),
                    project_id: project_id.clone(),
                }])
            }
            TaskCommand::Complete { task_id, completed_by } => match (&self.project_id, self.completed) {
                (None, _) => Err(TaskError::Missing),
                (Some(_), true) => Ok(vec![]),
                (Some(project_id), false) => Ok(vec![TaskEvent::Completed {
                    task_id: task_id.clone(),
                    project_id: project_id.clone(),
                    completed_by: completed_by.clone(),
                }]),
            },
        }
    }

    fn evolve(mut self, event: &TaskEvent) -> Self {
        match event {
            TaskEvent::Created { project_id, .. } => self.project_id = Some(project_id.clone()),
            TaskEvent::Completed { .. } => self.completed = true,
        }
        self
    }
}

// ---- The notification handler -----------------------------------------------------------

/// A notification for a project's members; where it goes (mail, push) is the gateway's
/// business. This example's gateway keeps them in a list.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Notification {
    pub(crate) project_id: String,
    pub(crate) message: String,
}

#[derive(Clone, Default)]
pub(crate) struct Gateway {
    sent: Arc<Mutex<Vec<Notification>>>,
}

impl Gateway {
    pub(crate) fn sent(&self) -> Vec<Notification> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn send(&self, notification: Notification) -> Result<(), HandlerError> {
        let mut sent = self.sent.lock().map_err(|_| HandlerError::retryable("the gateway is unavailable"))?;
        sent.push(notification);
        Ok(())
    }
}

/// Seed 001's `TaskCreatedNotificationHandler`.
async fn notify_project_members(gateway: Gateway, event: RecordedEvent) -> Result<(), HandlerError> {
    let task: TaskEvent =
        bifrost_sourcing::event::decode(&event).map_err(|e| HandlerError::permanent(e.to_string()))?;
    let TaskEvent::Created { title, created_by, project_id, .. } = task else { return Ok(()) };
    gateway.send(Notification { project_id, message: format!("{created_by} created \"{title}\"") })
}

// ---- The projection ---------------------------------------------------------------------

/// A project's board.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProjectBoard {
    pub(crate) open: BTreeMap<String, String>,
    pub(crate) completed: Vec<String>,
}

impl View for ProjectBoard {
    type Event = TaskEvent;

    fn key(event: &TaskEvent, _: &RecordedEvent) -> Option<String> {
        match event {
            TaskEvent::Created { project_id, .. } | TaskEvent::Completed { project_id, .. } => {
                Some(project_id.clone())
            }
        }
    }

    fn evolve(board: Option<Self>, event: &TaskEvent, _: &RecordedEvent) -> Option<Self> {
        let mut board = board.unwrap_or_default();
        match event {
            TaskEvent::Created { task_id, title, .. } => {
                board.open.insert(task_id.clone(), title.clone());
            }
            TaskEvent::Completed { task_id, .. } => {
                if let Some(title) = board.open.remove(task_id) {
                    board.completed.push(title);
                }
            }
        }
        Some(board)
    }
}

pub(crate) struct Report {
    pub(crate) notifications: Vec<Notification>,
    pub(crate) boards: Vec<(String, ProjectBoard)>,
}

pub(crate) async fn run(store: Arc<bifrost_sqlite::SqliteStore>) -> bifrost_sourcing::Result<Report> {
    let events: Arc<dyn EventStore> = store.clone();
    let gateway = Gateway::default();
    let handler_gateway = gateway.clone();
    let bus = Bus::new(store.clone());
    let notifications = bus
        .consumer(
            "task-notifications",
            GroupFilter::types(["task.created"]),
            ConsumerOptions::default(),
            move |event| notify_project_members(handler_gateway.clone(), event),
        )
        .await?;
    let boards = Arc::new(ViewProjection::<ProjectBoard>::new(
        "project-boards",
        store.clone(),
        LogFilter::default().with_types(["task.#"])?,
    ));
    let projection = ProjectionRunner::new(events.clone(), boards.clone()).start();

    let tasks = Repository::<Task>::new(events.clone());
    let create = |id: &str, title: &str, project: &str| TaskCommand::Create {
        task_id: id.into(),
        title: title.into(),
        description: format!("Detailed description of {title}"),
        created_by: "user-456".into(),
        workspace_id: "workspace-789".into(),
        project_id: project.into(),
    };
    tasks.execute("123", &create("123", "Implement feature X", "project-101")).await?;
    tasks.execute("124", &create("124", "Write the docs", "project-101")).await?;
    tasks.execute("125", &create("125", "Plan the launch", "project-202")).await?;
    let done = tasks
        .execute("123", &TaskCommand::Complete { task_id: "123".into(), completed_by: "user-456".into() })
        .await?;

    let head = done.appended.map_or(0, |a| a.last_position);
    tokio::time::timeout(Duration::from_secs(10), projection.wait_for(head))
        .await
        .map_err(|_| bifrost_sourcing::Error::Handler("the projection did not catch up".into()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gateway.sent().len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    notifications.unsubscribe().await?;
    projection.stop().await;
    Ok(Report { notifications: gateway.sent(), boards: boards.list(None, 100).await? })
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = bifrost_examples::open_store(dir.path())?;
    let report = run(store.clone()).await?;
    for n in &report.notifications {
        println!("notify members of {}: {}", n.project_id, n.message);
    }
    for (project, board) in &report.boards {
        println!(
            "{project}: open {:?}, completed {:?}",
            board.open.values().collect::<Vec<_>>(),
            board.completed
        );
    }
    store.close().await?;
    Ok(())
}

//! The CLI's one error type: a kind that picks the exit code, a message that
//! says what is wrong, and a hint that says what to do.

use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input: a wrong ref, config key, file. Exit 2.
    User,
    /// A check that ran and failed (parity, verify, reproduce). Exit 1.
    Check,
    /// Something broke inside graft or the machine. Exit 3.
    Internal,
    /// Stopped by a signal, cleanly: exit 128 + the signal's number.
    Interrupted(i32),
}

#[derive(Debug)]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn user(message: impl Into<String>) -> Self {
        CliError {
            kind: ErrorKind::User,
            message: message.into(),
            hint: None,
        }
    }

    pub fn check(message: impl Into<String>) -> Self {
        CliError {
            kind: ErrorKind::Check,
            message: message.into(),
            hint: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        CliError {
            kind: ErrorKind::Internal,
            message: message.into(),
            hint: None,
        }
    }

    pub fn interrupted(exit_code: i32, message: impl Into<String>) -> Self {
        CliError {
            kind: ErrorKind::Interrupted(exit_code),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Check => 1,
            ErrorKind::User => 2,
            ErrorKind::Internal => 3,
            ErrorKind::Interrupted(code) => code,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = match self.kind {
            ErrorKind::Interrupted(_) => "interrupted",
            _ => "error",
        };
        write!(f, "{label}: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Remote(inner) = e {
            return (*inner).into();
        }
        let kind = match &e {
            StoreError::NotAStore { .. }
            | StoreError::UnknownRef { .. }
            | StoreError::AmbiguousRef { .. }
            | StoreError::BadRef { .. }
            | StoreError::BadTagName { .. }
            | StoreError::NotFound { .. } => ErrorKind::User,
            StoreError::CorruptObject { .. } | StoreError::MissingObject { .. } => ErrorKind::Check,
            _ => ErrorKind::Internal,
        };
        let hint = match &e {
            StoreError::UnknownRef { .. } => Some("`graft log` lists runs; `graft show` accepts tags, RUN@STEP, RUN@best, RUN@last and id prefixes of 4+ characters".to_string()),
            StoreError::AmbiguousRef { .. } => Some("give more characters of the id".to_string()),
            StoreError::CorruptObject { .. } | StoreError::MissingObject { .. } => Some("run `graft verify` to list every damaged object".to_string()),
            StoreError::Busy { .. } => Some("another graft command is holding the index; set GRAFT_LOCK_TIMEOUT_MS to wait longer".to_string()),
            _ => None,
        };
        CliError {
            kind,
            message: e.to_string(),
            hint,
        }
    }
}

impl From<crate::store::remote::RemoteError> for CliError {
    fn from(e: crate::store::remote::RemoteError) -> Self {
        use crate::store::remote::RemoteError;
        if let RemoteError::Store(inner) = e {
            return inner.into();
        }
        let kind = if e.is_user_error() {
            ErrorKind::User
        } else if matches!(
            e,
            RemoteError::Invalid { .. }
                | RemoteError::BadManifest { .. }
                | RemoteError::CorruptRemoteObject { .. }
                | RemoteError::MissingRemoteObject { .. }
                | RemoteError::MissingLocalObject { .. }
        ) {
            ErrorKind::Check
        } else {
            ErrorKind::Internal
        };
        CliError {
            kind,
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

impl From<crate::lineage::QueryError> for CliError {
    fn from(e: crate::lineage::QueryError) -> Self {
        CliError::user(format!("--where: {e}"))
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

//! Plugins: the wasm file or built-in, its config, grants and limits, and `on_error`.

use std::time::Duration;

use toml::Spanned;

use crate::model::*;
use crate::raw::*;

use super::{check_name, Validator};

impl<'a> Validator<'a> {
    pub(super) fn plugins(&mut self, raw: &[Spanned<RawPlugin>], field: &str) -> Vec<PluginConfig> {
        raw.iter()
            .enumerate()
            .filter_map(|(i, p)| self.plugin(p, &format!("{field}[{i}]")))
            .collect()
    }

    pub(super) fn plugin(&mut self, raw: &Spanned<RawPlugin>, field: &str) -> Option<PluginConfig> {
        let p = raw.get_ref();
        let source = self.plugin_source(raw, field)?;
        if let Some(n) = &p.name {
            if let Err(m) = check_name(n) {
                return self.err(raw.span(), &format!("{field}.name"), m);
            }
        }
        let name = p.name.clone().unwrap_or_else(|| match &source {
            PluginSource::Builtin(n) => n.clone(),
            // A file's stem is the tenant's to choose: it becomes a name only if it is one.
            PluginSource::Wasm(path) => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| check_name(s).is_ok())
                .unwrap_or_else(|| "plugin".into()),
        });
        let on_error = match p
            .on_error
            .as_ref()
            .map(|s| (s.get_ref().as_str(), s.span()))
        {
            None | Some(("deny", _)) => OnError::Deny,
            Some(("allow", _)) => OnError::Allow,
            Some((other, span)) => {
                return self.err(
                    span,
                    &format!("{field}.on_error"),
                    format!("`{other}` is neither \"deny\" nor \"allow\""),
                )
            }
        };
        self.fail_open(p, &source, on_error, field);
        let limits = self.plugin_limits(raw, field);
        let config = match &p.config {
            Some(table) => serde_json::to_value(table).unwrap_or(serde_json::Value::Null),
            None => serde_json::json!({}),
        };
        let (line, col) = self.loc.position(raw.span().start);
        Some(PluginConfig {
            name,
            source,
            config,
            on_error,
            limits,
            files: self.files.clone(),
            confined: self.confine.clone(),
            location: format!("{}:{line}:{col}", self.loc.file.display()),
        })
    }

    /// A built-in that exists, or a wasm file that does (beneath a tenant's directory for a tenant).
    fn plugin_source(&mut self, raw: &Spanned<RawPlugin>, field: &str) -> Option<PluginSource> {
        let p = raw.get_ref();
        let source = match (&p.builtin, &p.wasm) {
            (Some(b), None) => {
                if !crate::builtins::exists(b.get_ref()) {
                    return self.err(
                        b.span(),
                        &format!("{field}.builtin"),
                        format!(
                            "no built-in plugin is named `{}` (there are: {})",
                            b.get_ref(),
                            crate::builtins::NAMES.join(", ")
                        ),
                    );
                }
                PluginSource::Builtin(b.get_ref().clone())
            }
            (None, Some(w)) => PluginSource::Wasm(self.existing_file(w, &format!("{field}.wasm"))?),
            _ => {
                return self.err(
                    raw.span(),
                    field,
                    "a plugin needs exactly one of builtin = \"…\" or wasm = \"…\"",
                )
            }
        };
        Some(source)
    }

    /// The plugin's limits, each within its bounds (an error names the one that is not).
    fn plugin_limits(&mut self, raw: &Spanned<RawPlugin>, field: &str) -> PluginLimits {
        let p = raw.get_ref();
        let d = PluginLimits::default();
        let limits = PluginLimits {
            time: self
                .duration_opt(&p.limits.time, &format!("{field}.limits.time"))
                .unwrap_or(d.time),
            memory: self
                .size_opt(&p.limits.memory, &format!("{field}.limits.memory"))
                .unwrap_or(d.memory),
            stack: self
                .size_opt(&p.limits.stack, &format!("{field}.limits.stack"))
                .unwrap_or(d.stack),
            instances: p
                .limits
                .instances
                .as_ref()
                .map_or(d.instances, |n| *n.get_ref() as usize),
        };
        if limits.time.is_zero() || limits.time > Duration::from_secs(10) {
            self.err::<()>(
                raw.span(),
                &format!("{field}.limits.time"),
                "must be between 1ms and 10s",
            );
        }
        if limits.memory < (1 << 20) || limits.memory > (256 << 20) {
            self.err::<()>(
                raw.span(),
                &format!("{field}.limits.memory"),
                "must be between 1MiB and 256MiB",
            );
        }
        if limits.stack < (64 << 10) || limits.stack > (8 << 20) {
            self.err::<()>(
                raw.span(),
                &format!("{field}.limits.stack"),
                "must be between 64KiB and 8MiB",
            );
        }
        // Each distinct stack size needs a wasmtime engine of its own: sizes round up to a few fixed
        // classes, so no config (a tenant's least of all) can make the process create many.
        let limits = PluginLimits {
            stack: crate::limits::stack_class(limits.stack),
            ..limits
        };
        if limits.instances == 0 || limits.instances > 64 {
            self.err::<()>(
                raw.span(),
                &format!("{field}.limits.instances"),
                "must be between 1 and 64",
            );
        }
        limits
    }

    /// `on_error = "allow"` on an access-control built-in is a bypass any client that can make the
    /// plugin fail may use; it takes `i_understand_this_disables_auth = true` to be accepted.
    pub(super) fn fail_open(
        &mut self,
        p: &RawPlugin,
        source: &PluginSource,
        on_error: OnError,
        field: &str,
    ) {
        let opt_in = p.i_understand_this_disables_auth.as_ref();
        let guard = match source {
            PluginSource::Builtin(n) if crate::builtins::ACCESS_CONTROL.contains(&n.as_str()) => {
                Some(n)
            }
            _ => None,
        };
        match (on_error, guard, opt_in.map(|o| (*o.get_ref(), o.span()))) {
            (OnError::Allow, Some(name), None | Some((false, _))) => {
                let span = p.on_error.as_ref().map_or(0..0, |s| s.span());
                self.err::<()>(
                    span,
                    &format!("{field}.on_error"),
                    format!(
                        "`on_error = \"allow\"` on `{name}` lets every request it would refuse through whenever it fails, and a client can make it fail (slow credentials, a crafted header); remove it to fail closed, or add `i_understand_this_disables_auth = true`"
                    ),
                );
            }
            (OnError::Deny, _, Some((true, span))) => {
                self.err::<()>(
                    span,
                    &format!("{field}.i_understand_this_disables_auth"),
                    "only meaningful with `on_error = \"allow\"`",
                );
            }
            _ => {}
        }
    }
}

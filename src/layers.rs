//! The layering of the crate (see the crate's doc comment) as a test: every `crate::` path in
//! a module names only its own layer or one below it, and bollard is named only by the docker
//! client. A new upward import fails here instead of in a review.

use std::path::{Path, PathBuf};

/// Each layer with the layers it may use, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    ("progress", &[]),
    ("wait", &[]),
    ("model", &[]),
    ("stack", &["model"]),
    ("clients", &["model", "stack", "wait", "progress"]),
    ("ops", &["model", "stack", "clients", "wait", "progress"]),
    ("cli", &["model", "stack", "clients", "ops", "wait", "progress"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source file names through `crate::`, including those inside
/// `use crate::{a::x, b::{y, z}}` groups. Line comments are skipped (doc links may point up).
fn crate_modules(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    };
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.trim_start().strip_prefix('{') {
            // Split the group's top level at commas; each item starts with a module name.
            let (mut depth, mut start) = (0usize, 0usize);
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

#[test]
fn layers_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let layer = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs"))
            .unwrap_or_default();
        let Some((_, allowed)) = LAYERS.iter().find(|(name, _)| *name == layer) else {
            continue; // lib.rs, main.rs, this file
        };
        let text = std::fs::read_to_string(file).expect("source is readable");
        for module in crate_modules(&text) {
            if module != layer && !allowed.contains(&module.as_str()) {
                wrong.push(format!("{}: {layer} uses crate::{module}", rel.display()));
            }
        }
        let docker_client = rel.starts_with("clients/docker");
        if !docker_client
            && text.lines().any(|l| l.contains("bollard") && !l.trim_start().starts_with("//"))
        {
            wrong.push(format!("{}: names bollard outside the docker client", rel.display()));
        }
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    assert!(wrong.is_empty(), "imports that point up:\n{}", wrong.join("\n"));
}

#[test]
fn groups_and_paths_are_both_read() {
    let src = "use crate::{model::config::Config, ops::{lab::Lab, plot}};\n\
               // crate::cli in a comment is not an import\n\
               let x = crate::stack::BROKER;";
    assert_eq!(crate_modules(src), ["model", "ops", "stack"]);
}

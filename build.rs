//! Embeds the lab's build inputs (Dockerfiles, job sources, templates) in the binary, so that
//! `labctl` is self-contained and an image's tag can be a hash of exactly what it was built from.
use std::{env, fs, path::Path};

const ROOTS: &[&str] = &["Dockerfile.flink", "docker", "flink-jobs", "spark-jobs", "templates"];

fn collect(root: &Path, rel: &Path, out: &mut Vec<String>) {
    let path = root.join(rel);
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(&path).expect("read_dir").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // Build outputs and editor droppings are not inputs.
            if name.starts_with('.')
                || name == "target"
                || name == "__pycache__"
                || name.ends_with(".class")
            {
                continue;
            }
            collect(root, &rel.join(&*name), out);
        }
    } else if path.is_file() {
        out.push(rel.to_string_lossy().replace('\\', "/"));
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for r in ROOTS {
        println!("cargo:rerun-if-changed={r}");
        collect(root, Path::new(r), &mut files);
    }
    let mut code = String::from("pub static FILES: &[(&str, &[u8])] = &[\n");
    for f in &files {
        code.push_str(&format!(
            "    ({f:?}, include_bytes!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/{f}\"))),\n"
        ));
    }
    code.push_str("];\n");
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("assets.rs");
    fs::write(out, code).expect("write assets.rs");
}

//! The README's cross-backend table is generated from the committed reference runs; this
//! keeps it in step with them (regenerate with `hvprobe crossref ... --readme README.md`).

use std::path::Path;

use hvprobe_results::{Results, crossref};

#[test]
fn the_readme_table_is_the_one_the_reference_runs_give() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let runs: Vec<Results> = ["kvm_pvm.json", "kvm_pvm.amd-epyc.json", "kvm_amd.qemu-tcg.json"]
        .iter()
        .map(|f| Results::read(&root.join("results/reference").join(f)).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = crossref::table(&runs.iter().collect::<Vec<_>>());
    let expected = crossref::splice(&readme, &table).expect("README.md has the crossref markers");
    assert!(
        readme == expected,
        "README.md's cross-backend table is out of date: run `hvprobe crossref results/reference/kvm_pvm.json \
         results/reference/kvm_pvm.amd-epyc.json results/reference/kvm_amd.qemu-tcg.json --readme README.md`"
    );
}

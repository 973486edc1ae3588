//! AST and IR snapshots of every file in tests/in/ and examples/ (one snapshot per stage), and the IR
//! verifier run on each. Review changes with `cargo insta review`.

use std::path::Path;

use lossc::Program;

fn stages(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let ast = Program::parse_only(name, &text).unwrap_or_else(|d| panic!("{}", d.render()));
    let program = Program::from_source(name, &text).unwrap_or_else(|d| panic!("{}", d.render()));
    for f in &program.module.functions {
        lossc::ir::verify::verify(f).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let ir: Vec<String> = program
        .module
        .functions
        .iter()
        .map(lossc::ir::print::function)
        .collect();
    (lossc::syntax::print::file(&ast), ir.join("\n"))
}

#[test]
fn feature_inputs() {
    insta::glob!("in/*.lx", |path| {
        let (ast, ir) = stages(path);
        insta::assert_snapshot!("ast", ast);
        insta::assert_snapshot!("ir", ir);
    });
}

#[test]
fn examples() {
    insta::glob!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"), "*.lx", |path| {
        let (ast, ir) = stages(path);
        insta::assert_snapshot!("ast", ast);
        insta::assert_snapshot!("ir", ir);
    });
}

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
        let (grad, opt) = gradient_stages(path);
        insta::assert_snapshot!("grad", grad);
        insta::assert_snapshot!("opt", opt);
    });
}

#[test]
fn examples() {
    insta::glob!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"), "*.lx", |path| {
        let (ast, ir) = stages(path);
        insta::assert_snapshot!("ast", ast);
        insta::assert_snapshot!("ir", ir);
        let (grad, opt) = gradient_stages(path);
        insta::assert_snapshot!("grad", grad);
        insta::assert_snapshot!("opt", opt);
    });
}

/// `--emit grad` and `--emit opt` of every loss in a file.
fn gradient_stages(path: &Path) -> (String, String) {
    let program = Program::from_file(path).unwrap();
    let mut grad = Vec::new();
    let mut opt = Vec::new();
    for f in &program.module.functions {
        let g = lossc::api::simplified_gradient(f).unwrap();
        lossc::ir::verify::verify(&g).unwrap();
        grad.push(lossc::ir::print::readable(&g));
        let o = lossc::api::gradient(f).unwrap();
        lossc::ir::verify::verify(&o).unwrap();
        opt.push(lossc::ir::print::readable(&o));
    }
    (grad.join("\n"), opt.join("\n"))
}

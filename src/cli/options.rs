//! The defaults of `unroll train`, each one constant, and one table of its options: what the help
//! says of each default (written from the constants when the command is built, so the help cannot
//! drift from the code) and what a resume does with each option (see docs/ARCHITECTURE.md,
//! "Options and defaults").
//!
//! The options that have a default stay `Option<T>` in [`TrainArgs`]: a resume must know which
//! ones were given. [`Given`] records that for every option, from the parser's matches.

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches, ValueEnum};
use unroll::data::vocab::WordOptions;

use super::{
    ActivationArg, CellArg, Cli, Command, OnNanArg, OptimizerArg, ScheduleArg, SequencesArg,
    TrainArgs, VocabArg, bench,
};

pub const VOCAB: VocabArg = VocabArg::Chars;
pub const SEQUENCES: SequencesArg = SequencesArg::Stream;
/// The validation share of a corpus (taken from its end).
pub const VAL_FRAC: f64 = 0.05;
/// The validation share of a pairs file (drawn with the seed).
pub const PAIRS_VAL_FRAC: f64 = 0.1;
/// The predictions each periodic evaluation of a stream-mode run scores at most (see
/// README, "Large corpora", and BENCHMARKS.md for the measurements behind it).
pub const VAL_TOKENS: u64 = 1 << 17;
/// The lines each periodic evaluation of a lines-mode run scores at most.
pub const VAL_LINES: u64 = 5_000;
/// The pairs each periodic evaluation of a run on pairs scores at most.
pub const VAL_PAIRS: u64 = 5_000;
pub const OUT: &str = "runs/latest";
pub const CELL: CellArg = CellArg::Rnn;
pub const HIDDEN: usize = 128;
pub const LAYERS: usize = 1;
pub const DROPOUT: f32 = 0.0;
pub const ACTIVATION: ActivationArg = ActivationArg::Tanh;
pub const BATCH: usize = 32;
pub const SEQ_LEN: usize = 64;
pub const STEPS: u64 = 1500;
pub const OPTIMIZER: OptimizerArg = OptimizerArg::Adam;
/// The learning rate of each optimizer, in the order the help lists them.
pub const LR: [(f32, &[OptimizerArg]); 4] = [
    (2e-3, &[OptimizerArg::Adam, OptimizerArg::Rmsprop]),
    (0.05, &[OptimizerArg::Momentum]),
    (0.5, &[OptimizerArg::Sgd]),
    (0.1, &[OptimizerArg::Adagrad]),
];
pub const LR_SCHEDULE: ScheduleArg = ScheduleArg::Constant;
pub const LR_DECAY: f32 = 0.5;
pub const LR_DECAY_EVERY: u64 = 1000;
pub const LR_MIN: f32 = 0.0;
pub const PATIENCE: u32 = 2;
pub const MOMENTUM: f32 = 0.9;
pub const WEIGHT_DECAY: f32 = 0.0;
pub const CLIP: f32 = 5.0;
pub const SEED: u64 = 1;
pub const EVAL_EVERY: u64 = 250;
pub const CHECKPOINT_EVERY: u64 = 0;
pub const LOG_EVERY: u64 = 50;
pub const ON_NAN: OnNanArg = OnNanArg::ReduceLr;
/// Tokens sampled at the end of a language-model run.
pub const SAMPLE: usize = 300;

/// The default learning rate of `optimizer`.
pub fn default_lr(optimizer: OptimizerArg) -> f32 {
    LR.iter()
        .find(|(_, of)| of.contains(&optimizer))
        .map_or(LR[0].0, |&(lr, _)| lr)
}

/// What a resume does with an option of `unroll train`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnResume {
    /// `--resume` itself.
    Resumes,
    /// Refused by the parser beside `--resume`: it names the data, the destination or the start
    /// of the run, which the saved run already has.
    Conflicts,
    /// Refused with a usage error: the run keeps the setting it was started with.
    Kept,
    /// Taken by the resumed run.
    Changes,
}

/// One option of `unroll train`.
pub struct TrainOption {
    /// The parser's id (the field of [`TrainArgs`]).
    pub id: &'static str,
    pub on_resume: OnResume,
    /// What the help says of its default, after the option's own text.
    pub default: Option<String>,
}

/// `[default: X]`.
fn shown(x: impl std::fmt::Display) -> Option<String> {
    Some(format!("[default: {x}]"))
}

/// The name of a value on the command line.
fn name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

/// A learning rate as the help writes it: the shorter of plain and exponent notation.
fn lr_text(lr: f32) -> String {
    let (plain, exp) = (lr.to_string(), format!("{lr:e}"));
    if exp.len() < plain.len() { exp } else { plain }
}

/// "2e-3 for adam and rmsprop, 0.05 momentum, ...".
fn lr_defaults_text() -> String {
    let groups: Vec<String> = LR
        .iter()
        .enumerate()
        .map(|(i, (lr, of))| {
            let names: Vec<String> = of.iter().map(|&o| name(o)).collect();
            let for_ = if i == 0 { "for " } else { "" };
            format!("{} {for_}{}", lr_text(*lr), names.join(" and "))
        })
        .collect();
    groups.join(", ")
}

/// Every option of `unroll train`: the ones a resume keeps first, in the order a refusal lists
/// them, then those it changes, in the order its message lists them.
pub fn train_options() -> Vec<TrainOption> {
    use OnResume::{Changes, Conflicts, Kept, Resumes};
    let o = |id, on_resume, default| TrainOption {
        id,
        on_resume,
        default,
    };
    let words = WordOptions::default();
    vec![
        o("cell", Kept, shown(name(CELL))),
        o("hidden", Kept, shown(HIDDEN)),
        o("layers", Kept, shown(LAYERS)),
        o("dropout", Kept, shown(DROPOUT)),
        o("dropout_embed", Kept, shown(DROPOUT)),
        o("dropout_out", Kept, shown(DROPOUT)),
        o("init_range", Kept, None),
        o("forget_bias_one", Kept, None),
        o("activation", Kept, shown(name(ACTIVATION))),
        o("batch", Kept, shown(BATCH)),
        o("seq_len", Kept, shown(SEQ_LEN)),
        o("optimizer", Kept, shown(name(OPTIMIZER))),
        o("lr", Kept, shown(lr_defaults_text())),
        o("lr_schedule", Kept, shown(name(LR_SCHEDULE))),
        o("lr_decay", Kept, shown(LR_DECAY)),
        o("lr_decay_every", Kept, shown(LR_DECAY_EVERY)),
        o("lr_min", Kept, shown(LR_MIN)),
        o("patience", Kept, shown(PATIENCE)),
        o("momentum", Kept, shown(MOMENTUM)),
        o("weight_decay", Kept, shown(WEIGHT_DECAY)),
        o("clip", Kept, shown(CLIP)),
        o("epochs", Kept, None),
        o("on_nan", Kept, shown(name(ON_NAN))),
        o("force", Kept, None),
        o("embed", Kept, None),
        o("tie_weights", Kept, None),
        o("bidirectional", Kept, None),
        o("proj_size", Kept, None),
        o("no_bias", Kept, None),
        o("input", Kept, None),
        o("output", Kept, None),
        o("input_classes", Kept, shown("the largest id in x, plus 1")),
        o("output_classes", Kept, shown("the largest id in y, plus 1")),
        o("steps", Changes, shown(STEPS)),
        o("eval_every", Changes, shown(EVAL_EVERY)),
        o("checkpoint_every", Changes, shown(CHECKPOINT_EVERY)),
        o("log_every", Changes, shown(LOG_EVERY)),
        o("device", Changes, None),
        o("tune", Changes, None),
        o("sample", Changes, None),
        o("final_val_tokens", Changes, shown("all")),
        o("resume", Resumes, None),
        o("out", Conflicts, shown(OUT)),
        o("init", Conflicts, None),
        o("corpus", Conflicts, None),
        o("vocab", Conflicts, shown(name(VOCAB))),
        o(
            "val_frac",
            Conflicts,
            Some(format!(
                "[default: {VAL_FRAC}]; with --pairs, the fraction of the pairs, drawn with \
                 --seed [default: {PAIRS_VAL_FRAC}]"
            )),
        ),
        o(
            "val_tokens",
            Kept,
            Some(format!(
                "[default: {VAL_TOKENS}; lines mode: {VAL_LINES} lines; with --pairs: \
                 {VAL_PAIRS} pairs]"
            )),
        ),
        o("val_corpus", Conflicts, None),
        o("val_pairs", Conflicts, None),
        o("seed", Conflicts, shown(SEED)),
        o("sequences", Conflicts, shown(name(SEQUENCES))),
        o("max_vocab", Conflicts, shown(words.max_vocab)),
        o("min_count", Conflicts, shown(words.min_count)),
        o("lowercase", Conflicts, None),
        o("pairs", Conflicts, None),
    ]
}

/// The flag of an option id: `seq_len` -> `--seq-len`.
pub fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

/// The options of `unroll train` given on the command line, by id.
#[derive(Clone, Debug, Default)]
pub struct Given(Vec<&'static str>);

impl Given {
    fn of(matches: &ArgMatches) -> Self {
        let ids = train_options().into_iter().map(|o| o.id);
        Given(
            ids.filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
                .collect(),
        )
    }

    pub fn has(&self, id: &str) -> bool {
        self.0.contains(&id)
    }

    /// The flags of the given options among `ids`, in the order of `ids`.
    pub fn flags(&self, ids: &[&str]) -> Vec<String> {
        ids.iter()
            .filter(|id| self.has(id))
            .map(|id| flag(id))
            .collect()
    }
}

/// The ids of the options a resume treats as `on_resume`, in the table's order.
fn ids_on_resume(on_resume: OnResume) -> Vec<&'static str> {
    train_options()
        .into_iter()
        .filter(|o| o.on_resume == on_resume)
        .map(|o| o.id)
        .collect()
}

/// The given options that a resume keeps from the run's start (giving one is a contradiction).
pub fn kept_on_resume(a: &TrainArgs) -> Vec<String> {
    a.given.flags(&ids_on_resume(OnResume::Kept))
}

/// The options a resume takes: "--steps, ... and --sample".
pub fn changed_on_resume() -> String {
    let flags: Vec<String> = ids_on_resume(OnResume::Changes)
        .iter()
        .map(|id| flag(id))
        .collect();
    match flags.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// `arg` with `default` (when there is one) after its help text.
pub fn with_default(arg: Arg, default: Option<&str>) -> Arg {
    let Some(default) = default else {
        return arg;
    };
    let append = |text: Option<&clap::builder::StyledStr>| match text {
        Some(t) => format!("{t} {default}"),
        None => default.to_string(),
    };
    let help = append(arg.get_help());
    let arg = match arg.get_long_help() {
        Some(long) => {
            let long = append(Some(long));
            arg.long_help(long)
        }
        None => arg,
    };
    arg.help(help)
}

/// The options of `unroll train` with their defaults in the help and the conflicts of `--resume`.
fn train_command(c: clap::Command) -> clap::Command {
    let options = train_options();
    let conflicts = ids_on_resume(OnResume::Conflicts);
    c.mut_args(|a| {
        let default = options
            .iter()
            .find(|o| o.id == a.get_id())
            .and_then(|o| o.default.as_deref());
        let a = with_default(a, default);
        if a.get_id() == "resume" {
            a.conflicts_with_all(conflicts.iter().copied())
        } else {
            a
        }
    })
}

/// The command line of `unroll`, with the defaults written into the help.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommands(|c| match c.get_name() {
        "train" => train_command(c),
        "bench" => bench::with_defaults(c),
        _ => c,
    })
}

/// Parses the command line (exiting with the parser's message on an error) and records which
/// options of `unroll train` were given.
pub fn parse() -> Cli {
    let mut command = command();
    let matches = command.clone().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit());
    if let (Command::Train(a), Some(("train", m))) = (&mut cli.command, matches.subcommand()) {
        a.given = Given::of(m);
    }
    cli
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_train_option_is_in_the_table_once() {
        let table: Vec<&str> = train_options().iter().map(|o| o.id).collect();
        let command = command();
        let train = command
            .find_subcommand("train")
            .expect("the train subcommand");
        let args: Vec<&str> = train
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .filter(|id| *id != "help")
            .collect();
        for id in &args {
            assert_eq!(
                table.iter().filter(|t| *t == id).count(),
                1,
                "{id} must be in the table once"
            );
        }
        assert_eq!(table.len(), args.len(), "the table names unknown options");
    }

    #[test]
    fn doc_comments_write_no_default() {
        // Every default shown comes from the table.
        let train = Cli::command();
        for sub in ["train", "bench"] {
            let sub = train.find_subcommand(sub).expect("subcommand");
            for a in sub.get_arguments() {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !help.contains("[default:") && !help.contains("; default "),
                    "{}: {help}",
                    a.get_id()
                );
            }
        }
    }

    #[test]
    fn defaults_in_the_help() {
        let command = command();
        let train = command.find_subcommand("train").expect("train");
        let help = |id: &str| {
            let a = train
                .get_arguments()
                .find(|a| a.get_id() == id)
                .expect("arg");
            a.get_help().map(|h| h.to_string()).unwrap_or_default()
        };
        assert_eq!(
            help("lr"),
            "Learning rate [default: 2e-3 for adam and rmsprop, 0.05 momentum, 0.5 sgd, 0.1 \
             adagrad]"
        );
        assert!(help("hidden").ends_with("[default: 128]"));
        assert!(help("clip").ends_with("[default: 5]"));
        assert!(help("on_nan").ends_with("[default: reduce-lr]"));
        assert!(help("val_frac").contains("[default: 0.05]; with --pairs"));
        assert_eq!(default_lr(OptimizerArg::Rmsprop), 2e-3);
        assert_eq!(default_lr(OptimizerArg::Sgd), 0.5);
    }

    fn given(args: &[&str]) -> Result<Given, clap::Error> {
        let matches = command().try_get_matches_from(args)?;
        let (_, train) = matches.subcommand().expect("a subcommand");
        Ok(Given::of(train))
    }

    #[test]
    fn resume_refuses_what_the_run_keeps() {
        let args = [
            "unroll", "train", "--resume", "d", "--embed", "8", "--steps", "5",
        ];
        let a = TrainArgs {
            given: given(&args).expect("parses"),
            ..Default::default()
        };
        assert_eq!(kept_on_resume(&a), ["--embed"]);
        for conflict in ["--seed", "--corpus", "--pairs", "--out"] {
            let args = ["unroll", "train", "--resume", "d", conflict, "1"];
            let e = given(&args).expect_err(conflict);
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        }
    }

    #[test]
    fn resume_takes_what_its_message_says() {
        assert_eq!(
            changed_on_resume(),
            "--steps, --eval-every, --checkpoint-every, --log-every, --device, --tune, --sample \
             and --final-val-tokens"
        );
    }
}

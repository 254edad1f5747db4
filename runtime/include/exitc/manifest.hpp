#pragma once
// The parsed manifest.json of a compiled artifact (docs/artifact-format.md, schema version 1).
// Parsing validates every field a runtime relies on; errors name the file and the field.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "exitc/dtype.hpp"

namespace exitc {

constexpr int kSchemaVersion = 1;

// One dimension of a declared shape: a fixed size, or symbolic ("batch", "N", null).
struct Dim {
    int64_t size = -1;   // -1 when symbolic
    std::string symbol;  // the name for symbolic dims (may be empty)
    bool is_symbolic() const noexcept { return size < 0; }
};

// A declared batch-major tensor: model inputs/outputs and carried tensors.
struct TensorSpec {
    std::string name;
    DType dtype = DType::kFloat32;
    std::vector<Dim> shape;
    int batch_axis = 0;
};

// The exit head fused into a segment.
struct ExitHead {
    int index = 0;          // exit number, 0-based, in segment order
    std::string logits;     // output name; same meaning as the model's prediction_output
    std::string score;      // output name; float32 [batch]
    double threshold = 0;   // a row exits iff score >= threshold (compared in float32)
    std::string candidate;  // informational
};

struct Segment {
    int index = 0;
    std::string file;                    // relative to the artifact directory
    std::vector<std::string> inputs;     // graph inputs and/or carried tensors
    std::vector<std::string> carry_out;  // carried tensors this segment produces
    std::optional<ExitHead> exit;        // absent for the last segment
    std::vector<std::string> outputs;    // last segment only: the model's outputs
};

// Token inputs whose padding a runtime drops ("sequence"; exitc.passes.sequence): a batch is
// split by length (length_chunks) and each part runs at its longest row's length.
struct SequenceSpec {
    int axis = 1;                     // the sequence axis of every input listed (batch axis 0)
    std::vector<std::string> inputs;  // model inputs [batch, length]
    std::string mask;                 // among them: the attention mask (non-zero = token)
    int64_t length = 0;               // the padded length of the interface
    double call_rows = 2.0;           // a call's fixed cost, in full-length rows
};

// What the compiler certified ("calibration"): agreement with the original of at least
// target_acc at `confidence`. The exit loop ignores it; the agreement monitor reads it.
struct CalibrationSpec {
    double target_acc = 1.0;
    double confidence = 0.95;
};

struct Manifest {
    int schema_version = kSchemaVersion;
    std::string exitc_version;
    std::string backend;
    std::vector<TensorSpec> inputs;
    std::vector<TensorSpec> outputs;
    std::string prediction_output;
    // "prediction_kind" ("logits", "probabilities" or "log_probabilities"; exit heads answer in it):
    // whether the prediction output holds probabilities. Read where it has one
    // score per row ([batch, 1]): class 1 is score > 0.5 (probabilities) or score > 0 (a logit).
    bool prediction_probabilities = false;
    std::vector<TensorSpec> carried;
    std::vector<Segment> segments;
    std::optional<std::string> conditional_file;  // relative to the artifact directory
    // The first-exit batch-1 form: a batch-1 call runs segment 0 and its exit first, and the
    // conditional file only for a row that exit does not take.
    bool conditional_after_first_exit = false;
    std::optional<SequenceSpec> sequence;
    std::optional<CalibrationSpec> calibration;

    std::size_t num_exits() const noexcept { return segments.empty() ? 0 : segments.size() - 1; }

    // Parses and validates manifest JSON text. `origin` names the source in error messages.
    static Manifest parse(const std::string& json_text, const std::string& origin = "manifest.json");
    // Reads <artifact_dir>/manifest.json and checks that every file it names exists.
    static Manifest load(const std::string& artifact_dir);
};

}  // namespace exitc

// examples/quantize.cpp: the C++ twin of quantize.c, with RAII over the C handles
// (std::unique_ptr with the library's free function as deleter) and exceptions for statuses.
//
//   c++ -std=c++17 quantize.cpp $(pkg-config --cflags --libs peftswift) -o quantize_cpp && ./quantize_cpp
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <peftswift.h>

namespace pst {

struct Error : std::runtime_error {
    pst_status status;
    Error(pst_status s, const std::string &what) : std::runtime_error(what), status(s) {}
};

// pst_last_error() already names the failing function, the argument and the value.
inline void check(pst_status s) {
    if (s != PST_OK) throw Error(s, pst_last_error());
}

struct QuantDeleter {
    void operator()(pst_quant *q) const noexcept { pst_quant_free(q); }
};
using Quant = std::unique_ptr<pst_quant, QuantDeleter>;

inline Quant quantize_4bit(const std::vector<float> &w, std::vector<int64_t> shape, int blocksize,
                           int quant_type, bool double_quant) {
    pst_quant *raw = nullptr;
    check(pst_quant_create_4bit(w.data(), PST_DTYPE_F32, shape.data(), static_cast<int32_t>(shape.size()),
                                blocksize, quant_type, double_quant, &raw));
    return Quant(raw);
}

}  // namespace pst

int main() {
    if (pst_abi_version() != PST_ABI_VERSION) {
        std::fprintf(stderr, "header and library ABI versions differ\n");
        return 1;
    }
    try {
        const int rows = 128, cols = 256;
        std::vector<float> w(rows * cols);
        for (size_t i = 0; i < w.size(); i++) w[i] = 0.1f * std::sin(0.37f * static_cast<float>(i));

        for (int qt : {PST_QUANT_NF4, PST_QUANT_FP4}) {
            pst::Quant q = pst::quantize_4bit(w, {rows, cols}, 64, qt, /*double_quant=*/qt == PST_QUANT_NF4);
            std::vector<float> back(w.size());
            pst::check(pst_quant_dequantize(q.get(), back.data(), back.size() * sizeof(float), PST_DTYPE_F32));
            double max_err = 0;
            for (size_t i = 0; i < w.size(); i++) max_err = std::fmax(max_err, std::fabs(back[i] - w[i]));
            std::printf("%s: max |error| %.5f\n", qt == PST_QUANT_NF4 ? "nf4+dq" : "fp4", max_err);
            if (max_err > 0.03) return 1;
        }
        // a failure becomes an exception carrying the status and the library's message
        try {
            pst::quantize_4bit(w, {rows, 0}, 64, PST_QUANT_NF4, false);
            return 1;
        } catch (const pst::Error &e) {
            std::printf("expected error (%s): %s\n", pst_status_string(e.status), e.what());
        }
    } catch (const pst::Error &e) {
        std::fprintf(stderr, "error %d: %s\n", e.status, e.what());
        return 1;
    }
    return 0;
}

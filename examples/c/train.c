/* Trains a linear softmax classifier with a lossc loss from C: the loss and its gradient with respect to
 * the scores come from one call; the chain rule to the weights is written out here.
 *
 *   cargo build --release -p lossc-capi
 *   cc -O2 -Iinclude examples/c/train.c -Ltarget/release -llossc_c -Wl,-rpath,$PWD/target/release -lm -o train
 *   ./train
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "classifier.h"
#include "lossc.h"

static const char *SOURCE =
    "/// Cross-entropy with a temperature.\n"
    "loss ce(s: f32[N, C], y: idx[N] < C, t: f32 = 1.0) {\n"
    "    mean[i] (logsumexp[k] s[i, k] / t) - s[i, y[i]] / t\n"
    "}\n";

int main(void) {
    char *error = NULL;
    lossc_module *module = lossc_compile(SOURCE, "ce.lx", &error);
    if (!module) {
        fprintf(stderr, "%s\n", error);
        lossc_string_free(error);
        return 1;
    }
    printf("losses: %zu (%s)\n", lossc_module_loss_count(module), lossc_module_loss_name(module, 0));
    lossc_loss *ce = lossc_module_loss(module, "ce", 1, &error);
    if (!ce) {
        fprintf(stderr, "%s\n", error);
        lossc_string_free(error);
        return 1;
    }

    static float x[N * D], w[D * C], s[N * C], grad_s[N * C];
    static int64_t y[N];
    make_data(x, y);

    size_t s_shape[2] = {N, C}, y_shape[1] = {N};
    lossc_input inputs[2] = {
        {"s", s, LOSSC_F32, 2, s_shape},
        {"y", y, LOSSC_I64, 1, y_shape},
    };
    lossc_hyper hypers[1] = {{"t", 0.5}};
    lossc_grad grads[1] = {{"s", grad_s, N * C}};
    float loss = 0;
    for (int step = 0; step < 50; step++) {
        scores(x, w, s);
        int status = lossc_loss_call(ce, inputs, 2, hypers, 1, grads, 1, &loss, &error);
        if (status != LOSSC_OK) {
            fprintf(stderr, "error %d: %s\n", status, error);
            lossc_string_free(error);
            return 1;
        }
        if (step % 10 == 0 || step == 49) printf("step %d: loss %.4f\n", step, loss);
        sgd_step(x, grad_s, w, 0.5f);
    }

    /* A bad call: a label out of range is an error code and a message, never a crash. */
    y[3] = C;
    int status = lossc_loss_call(ce, inputs, 2, NULL, 0, grads, 1, &loss, &error);
    printf("bad label: status %d: %s\n", status, error);
    lossc_string_free(error);

    /* A compile error: the rendered diagnostics. */
    lossc_module *bad = lossc_compile("loss f(x: f32[N]) { mean[i] x[j] }", "bad.lx", &error);
    printf("bad source: %s (%s)\n", bad ? "compiled" : "rejected", strstr(error, "unknown name `j`") ? "unknown name `j`" : error);
    lossc_string_free(error);

    lossc_loss_free(ce);
    lossc_module_free(module);
    return 0;
}
